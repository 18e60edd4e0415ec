#!/usr/bin/env python3
"""Search latency of the exact SQL the server runs, through pgbench: the SEARCH statement
(and SEARCH_SCOPE before it, where queries.rs has one) of a src/db/queries.rs, with the
arguments the server would bind, as the user `searcher` of build.sql's database.

  bench/search/pgbench.py [--queries src/db/queries.rs] [--mode extended|prepared]
                          [--seconds 10] [--database search10m] [CASES...]

--mode extended sends each search as an unnamed statement, planned for its arguments (as
the server does with a query it does not cache); prepared plans it once per connection and
may settle on a generic plan after five runs (as a prepare_cached statement does). Cases are
NAME=QUERY[&conversation=ID][&before=ID] as in measure.py, @rankN a word of that rank; no
cases: measure.py's standard set (without later pages, which need the first page's ids:
give &before=). Prints p50/p90/p99/max over the transactions of each case, one client.
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
from measure import STANDARD, percentile  # noqa: E402


def rust_const(src, name):
    """The text of `pub const NAME: &str = ...;` with concat! and message_extras! expanded."""
    m = re.search(r"macro_rules! message_extras \{.*?concat!\((.*?)\)\s*\};\s*\}", src, re.S)
    parts = re.findall(r'"((?:[^"\\]|\\.)*)"|(\$m|\$viewer)', m.group(1))

    def extras(mm, viewer):
        return "".join(mm if v == "$m" else viewer if v == "$viewer" else lit for lit, v in parts)

    m = re.search(r"pub const " + name + r': &str = (concat!\((.*?)\);|"(.*?)";)', src, re.S)
    if not m:
        return None
    if m.group(3) is not None:
        return m.group(3).replace('\\"', '"')
    out = ""
    for lit, mac in re.findall(r'"((?:[^"\\]|\\.)*)"|message_extras!\(("[^)]*)\)', m.group(2)):
        if mac:
            a, b = [x.strip().strip('"') for x in mac.split(",")]
            out += extras(a, b)
        else:
            out += lit
    return out.replace('\\"', '"')


def params(sql, names):
    # Highest first, so that $1 does not eat $10.
    for i in sorted(range(len(names)), reverse=True):
        sql = sql.replace(f"${i + 1}", f":{names[i]}")
    return sql


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--queries", default="src/db/queries.rs")
    ap.add_argument("--mode", default="extended", choices=["extended", "prepared"])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--database", default="search10m")
    ap.add_argument("--explain", action="store_true",
                    help="print EXPLAIN (ANALYZE, BUFFERS) of each case instead of timing it")
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    src = open(a.queries).read()
    search, scope = rust_const(src, "SEARCH"), rust_const(src, "SEARCH_SCOPE")
    conn = ["-h", "127.0.0.1", "-p", "5433", "-U", "postgres"]
    cases = [tuple(c.split("=", 1)) for c in a.cases] or [c for c in STANDARD if "page=" not in c[1]]
    print(f"{'case':<22}{'query':<28}{'tx':>7}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  ms "
          f"({os.path.basename(a.queries)}, {a.mode})")
    for name, spec in cases:
        parts = spec.split("&")
        query, opts = parts[0], dict(p.split("=", 1) for p in parts[1:])
        words = []
        for w in query.split(" "):
            if w.startswith("@rank"):
                w = subprocess.run(["psql", "-X", "-At", *conn, "-d", a.database, "-c",
                                    f"SELECT word FROM s_vocab WHERE rank = {w[5:]}"],
                                   capture_output=True, text=True, check=True).stdout.strip()
            words.append(w)
        query = " ".join(words)
        conv = opts.get("conversation")
        before = opts.get("before", "9223372036854775807")
        conv_sql = f"'{conv}'" if conv else "NULL"
        # One query first binds the words and the user as variables (and, where the server
        # reads the scope first, is that read): the search itself then takes them as
        # arguments, as the server gives them.
        first = f"SELECT '{query}'::text AS q, 'searcher'::text AS me"
        if scope:
            first += (", (SELECT array_agg(conversation_id) FROM s)::text AS convs, "
                      "(SELECT coalesce(jsonb_object_agg(conversation_id, joined_cseq) "
                      "FILTER (WHERE joined_cseq > 0), '{}') FROM s)::text AS late")
            first = f"WITH s AS ({params(scope, ['me', 'conv'])}) " + first
            first = first.replace(":me", "'searcher'").replace(":conv", conv_sql)
            body = params(search, ["convs", "q", "before", "late", "lim", "me"])
        else:
            body = params(search, ["me", "conv", "q", "before", "lim"])
        sql = re.sub(r":conv\b", conv_sql, " ".join(body.split()))
        lines = [f"\\set before {before}", "\\set lim 21", first + " \\gset"]
        if a.explain:
            # psql: the same, with its variables quoted as literals.
            for v in ["convs", "late", "q", "me"]:
                sql = re.sub(r":" + v + r"\b", f":'{v}'", sql)
            script = "\n".join(lines + ["EXPLAIN (ANALYZE, BUFFERS) " + sql + ";"])
            out = subprocess.run(["psql", "-X", *conn, "-d", a.database], input=script,
                                 capture_output=True, text=True)
            print(f"== {name}: {query}\n{out.stdout}{out.stderr}")
            continue
        script = "\n".join(lines + [sql + ";"]) + "\n"
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "search.sql")
            open(path, "w").write(script)
            r = subprocess.run(["pgbench", "-n", *conn, "-M", a.mode, "-c", "1", "-T",
                                str(a.seconds), "-f", path, "-l", "--log-prefix",
                                os.path.join(d, "log"), a.database],
                               capture_output=True, text=True, cwd=d)
            if r.returncode != 0 or "failed transactions: 0" not in r.stdout:
                print(r.stdout[-800:], r.stderr[-800:])
                raise SystemExit(f"{name}: pgbench failed")
            lat = []
            for f in os.listdir(d):
                if f.startswith("log"):
                    lat += [int(l.split()[2]) / 1000 for l in open(os.path.join(d, f))]
        print(f"{name:<22}{query[:27]:<28}{len(lat):>7}{percentile(lat, 50):>9.2f}"
              f"{percentile(lat, 90):>9.2f}{percentile(lat, 99):>9.2f}{max(lat):>9.2f}", flush=True)


if __name__ == "__main__":
    main()
