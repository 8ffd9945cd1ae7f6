"""The template engine (app/core/templates.py): no database, no HTTP."""

from __future__ import annotations

import pytest

from postbell.app.core import templates as t

EXAMPLE = {
    "event": {
        "title": "Board games night",
        "starts_at": "2027-01-15T19:00:00Z",
        "url": "https://example.org/e/1",
    },
    "community": "Chess club",
}
LOCALES = {
    "en": {
        "IN_APP": {"title": "New event in {{ community }}", "body": "{{ event.title }}"},
        "EMAIL": {
            "subject": "{{ event.title }} — {{ community }}",
            "html": "<p>Hi {{ recipient.name }}, {{ event.title }}</p>"
            '<p><a href="{{ event.url }}">Open</a></p>',
        },
        "SMS": {"body": "{{ event.title }} {{ event.starts_at | datetime('short') }}"},
    },
    "de": {
        "IN_APP": {"title": "Neu in {{ community }}", "body": "{{ event.title }}"},
        "EMAIL": {
            "subject": "{{ event.title }} — {{ community }}",
            "html": "<p>Hallo {{ recipient.name }}</p>",
            "text": "Hallo {{ recipient.name }}, {{ event.title }}",
        },
    },
}


def compiled() -> t.Compiled:
    return t.validate(LOCALES, "en", EXAMPLE)


def one(source: str, channel: str = "SMS", field: str = "body") -> t.Compiled:
    return t.Compiled({"en": {channel: {field: source}}}, "en")


def test_locale_fallback_chain() -> None:
    """de-AT falls back to de, then to the template's default; case and _ do not matter."""
    assert t.locale_chain("de_at", "en") == ["de-AT", "de", "en"]
    assert t.resolve_locale(["en", "de"], "de-AT", "en") == "de"
    assert t.resolve_locale(["en", "de", "de-AT"], "de-at", "en") == "de-AT"
    assert t.resolve_locale(["en", "de"], None, "en") == "en"
    assert t.resolve_locale(["en", "de"], "fr-CA", "en") == "en"
    c = compiled()
    austrian = t.RecipientVars("u1", name="Jörg", locale="de-AT")
    assert c.render("IN_APP", austrian, EXAMPLE).fields["title"] == "Neu in Chess club"
    # German has no SMS part: the language wins, SMS renders German IN_APP's body
    assert c.render("SMS", austrian, EXAMPLE).fields == {"body": "Board games night"}


def test_autoescape_only_in_email_html() -> None:
    """A <script> in data is escaped in the HTML part and arrives unchanged elsewhere."""
    c = compiled()
    data = {**EXAMPLE, "event": {**EXAMPLE["event"], "title": "<script>x</script>"}}
    r = t.RecipientVars("u1", name="Ann")
    email = c.render("EMAIL", r, data).fields
    assert "&lt;script&gt;x&lt;/script&gt;" in email["html"]
    assert "<script>" not in email["html"]
    assert email["subject"].startswith("<script>x</script>")
    assert "<script>x</script>" in email["text"]  # derived from the HTML, decoded
    assert c.render("IN_APP", r, data).fields["body"] == "<script>x</script>"
    assert c.render("SMS", r, data).fields["body"].startswith("<script>x</script>")


def test_dates_and_numbers_in_the_recipients_locale_and_timezone() -> None:
    """Babel formats in the recipient's locale and timezone."""
    c = one("{{ at | datetime('medium') }} / {{ n | number }} / {{ at | date('long') }}")
    data = {"at": "2027-01-15T19:00:00Z", "n": 1234567.5}
    vienna = t.RecipientVars("u1", locale="de-AT", timezone="Europe/Vienna")
    assert (
        (c.render("SMS", vienna, data).fields["body"])
        == "15.01.2027, 20:00:00 / 1.234.567,5 / 15. Jänner 2027"
    )
    york = t.RecipientVars("u2", locale="en-US", timezone="America/New_York")
    assert (
        (c.render("SMS", york, data).fields["body"])
        == "Jan 15, 2027, 2:00:00\u202fPM / 1,234,567.5 / January 15, 2027"
    )


def test_email_text_derived_from_html() -> None:
    """Without a text part, the plain text comes from the HTML: paragraphs, links."""
    text = t.html_to_text(
        "<html><head><style>p{}</style></head><body><h1>Hi &amp; welcome</h1>"
        '<p>One<br>two <a href="https://x.org/a">open</a></p><ul><li>a</li><li>b</li></ul>'
    )
    assert text == "Hi & welcome\n\nOne\ntwo open (https://x.org/a)\n\n- a\n- b"


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{{ ''.__class__ }}", "__class__"),
        ("{{ cycler.__init__.__globals__ }}", "unsafe"),
        ("{{ lipsum.__globals__ }}", "__globals__"),
        ("{{ [1].append(2) }}", "unsafe"),
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            "loops",
        ),
        ("{{ range(10000000) | list }}", "range"),
        ("{{ 'a' * 1000000000 }}", "repetition"),
        ("{{ 2 ** 100000 }}", "exponent"),
        ("{{ '%999999999d' % 1 }}", "width"),
        ("{{ '{:>999999999}'.format(1) }}", "width"),
        ("{{ 'x' | center(99999999) }}", "width"),
        ("{{ range(100000) | join('a' * 1000) }}", "join"),
        (
            "{% set ns = namespace(s='aaaaaaaaaa') %}{% for i in range(40) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
            "grew past",
        ),
    ],
)
def test_sandbox_refuses_escapes_and_bombs(source: str, message: str) -> None:
    """Attribute escapes are refused; loops, ranges and sizes are bounded."""
    with pytest.raises(t.TemplateError) as caught:
        one(source).render("SMS", t.RecipientVars("u1"), {})
    assert message in str(caught.value)


def test_validation_names_locale_channel_field_and_line() -> None:
    """A syntax error and an undefined variable are located."""
    bad = {"en": LOCALES["en"], "de": {"EMAIL": {"subject": "x", "html": "<p>\n{{ oops }}</p>"}}}
    with pytest.raises(t.TemplateError) as caught:
        t.validate(bad, "en", EXAMPLE)
    e = caught.value
    assert (e.locale, e.channel, e.field, e.line) == ("de", "EMAIL", "html", 2)
    assert "'oops' is undefined" in str(e)
    assert e.path == "locales.de.EMAIL.html"
    syntax = {"en": {"SMS": {"body": "ok\n\n{% if %}"}}}
    with pytest.raises(t.TemplateError) as caught:
        t.validate(syntax, "en", {})
    assert (
        caught.value.locale,
        caught.value.channel,
        caught.value.field,
        caught.value.line,
    ) == ("en", "SMS", "body", 3)


def test_shape_checks() -> None:
    """Unknown channels, fields and locales, a missing default or required field."""
    for locales, default, where in [
        ({"en": {"FAX": {"body": "x"}}}, "en", "FAX"),
        ({"en": {"SMS": {"subject": "x", "body": "y"}}}, "en", "subject"),
        ({"en": {"EMAIL": {"subject": "x"}}}, "en", "html"),
        ({"en": {"SMS": {"body": "x"}}}, "de", "default_locale"),
        ({"xx-QQ-zzz": {"SMS": {"body": "x"}}}, "xx-QQ-zzz", "xx-QQ-zzz"),
    ]:
        with pytest.raises(t.TemplateError) as caught:
            t.validate(locales, default, {})
        assert where in str(caught.value)


def test_required_data_discovery() -> None:
    """Names used plainly are required; `is defined` and `default` make them optional;
    loop variables and postbell's own variables are not data."""
    c = one(
        "{{ a.b }}{% if c is defined %}{{ c }}{% endif %}{{ d | default('x') }}"
        "{% for x in items %}{{ x }}{% endfor %}{{ recipient.name }}{{ notification.id }}"
    )
    assert c.required_data() == ["a", "items"]
    assert t.missing_data(["c", "d"], {"d": 1}) == "c"
    assert t.missing_data(["a"], {"a": None}) is None


def test_render_once_unless_the_recipient_shows() -> None:
    """Parts that show nothing of the recipient share one render per locale x channel."""
    c = compiled()
    a = t.RecipientVars("a", name="A", locale="de-AT")
    b = t.RecipientVars("b", name="B", locale="de-DE")
    assert c.cache_key("IN_APP", a) == c.cache_key("IN_APP", b) == ("de", "IN_APP")
    assert c.cache_key("EMAIL", a) != c.cache_key("EMAIL", b)
    assert not c.uses_recipient("IN_APP")
    assert c.uses_recipient("EMAIL")
    assert c.uses_recipient("SMS")  # a datetime: the recipient's timezone shows


def test_generic_channels_render_from_in_app() -> None:
    """A channel without a part of its own (SLACK) renders the locale's IN_APP part."""
    c = compiled()
    out = c.render("SLACK", t.RecipientVars("u1", locale="de"), EXAMPLE)
    assert dict(out.fields) == {"title": "Neu in Chess club", "body": "Board games night"}
    with pytest.raises(t.TemplateError):
        t.Compiled({"en": {"SMS": {"body": "x"}}}, "en").render("EMAIL", t.RecipientVars("u"), {})
