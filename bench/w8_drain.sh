#!/bin/sh
# W8 by hand: N notify() calls to recipients nobody registered, then one worker of TREE
# (a checkout with its own .venv) drains them for 60 s; prints routed/s and the rows
# sequential scans read from recipients.   bench/w8_drain.sh TREE DBNAME N
T=$1; D=$2; N=$3
psql -h 127.0.0.1 -U root -d postgres -qc "DROP DATABASE IF EXISTS $D" -c "CREATE DATABASE $D" 2>/dev/null
cd $T && DATABASE_URL=postgresql://root@127.0.0.1:5432/$D .venv/bin/postbell migrate >/dev/null 2>&1
psql -h 127.0.0.1 -U root -d $D -qc "SET search_path=postbell,public" -c "SELECT count(notify(ARRAY['w8-' || i], '{\"message\": \"backlog\"}')) FROM generate_series(1, $N) i" >/dev/null
(DATABASE_URL=postgresql://root@127.0.0.1:5432/$D POSTBELL_ADMIN_KEY=pb_test_admin_key_0123456789abcdef POSTBELL_INBOX_SECRET=s timeout 60 .venv/bin/postbell worker > /tmp/$D.log 2>&1; true)
python3 - /tmp/$D.log <<'PY'
import json, sys, datetime as dt
ev=[json.loads(l) for l in open(sys.argv[1]) if '"routed"' in l and l.startswith("{")]
t=[dt.datetime.fromisoformat(e["timestamp"].replace("Z","+00:00")) for e in ev]
ms=[e["ms"] for e in ev]; n=sum(e["notifications"] for e in ev)
print(f"{sys.argv[1]}: {n} routed in {(t[-1]-t[0]).total_seconds():.2f} s (first batch to last), batch ms median {sorted(ms)[len(ms)//2]} last10 avg {sum(ms[-10:])/10:.1f}")
PY
psql -h 127.0.0.1 -U root -d $D -Atc "SELECT 'recipients seq rows read', coalesce(seq_tup_read,0) FROM pg_stat_user_tables WHERE relname='recipients'"
