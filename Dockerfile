# postbell: one image for `serve`, `worker` and `migrate`.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /srv/postbell
COPY pyproject.toml README.md ./
COPY app ./app
COPY workers ./workers
COPY postbell ./postbell
COPY sql ./sql
# The embedded Postgres (postbell[embedded]) is for development machines; a
# deployment talks to its database through DATABASE_URL.
RUN pip install . \
 && useradd --system --create-home --uid 10001 postbell

USER postbell
ENV PORT=8000
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import os,urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT','8000'))"
CMD ["postbell", "serve"]
