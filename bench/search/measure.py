#!/usr/bin/env python3
"""Search latency from outside: GET /api/search over one keep-alive HTTP connection, one
request at a time, as the user `searcher` of bench/search/build.sql's database.

  bench/search/measure.py [--url http://127.0.0.1:3190] [--token T] [--runs 50] [CASES...]

The token defaults to `pgchat token searcher` (run from the server's directory, with its
JWT_SECRET). Each case is run --runs times after one unmeasured warm-up; the times are from
sending the request to having read the whole reply. A case is NAME=QUERY, optionally with
&conversation=ID or &page=N (N-th page: each next page is asked with before_id = the last
message's id of the page before, and only the N-th is timed). Without CASES it runs the
standard set (the words are those of build.sql's vocabulary: ranks 1..128 common English,
the rest made up).
"""
import argparse
import http.client
import json
import statistics
import subprocess
import sys
import time
import urllib.parse

STANDARD = [
    # common words: ranks 1, 3, 10, 40, 100 (in about 48 %, 20 %, 8.5 %, 2 % and 1 % of
    # the messages)
    ("common 'the'", "the"),
    ("common 'you'", "you"),
    ("common 'of'", "of"),
    ("common 'now'", "now"),
    ("common 'people'", "people"),
    # rarer words (rank ~300, ~3,000, ~30,000 of the 50,000)
    ("rare rank 300", "@rank300"),
    ("rare rank 3000", "@rank3000"),
    ("rare rank 30000", "@rank30000"),
    ("no match", "zzzzqx"),
    # two words (AND), a phrase, or, not
    ("two words", "the meeting"),
    ("phrase", '"see you"'),
    ("phrase, rare", '"good morning"'),
    ("or", "lunch or tonight"),
    ("word -word", "meeting -the"),
    # one conversation: the searcher's busiest direct one, and a group
    ("one conv, common", "the&conversation=d1"),
    ("one conv, rare", "@rank3000&conversation=d1"),
    ("one group, common", "the&conversation=g151"),
    # later pages
    ("common, page 2", "the&page=2"),
    ("common, page 10", "the&page=10"),
    ("rare, page 2", "@rank300&page=2"),
]


def percentile(xs, p):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, int(round(p / 100 * len(xs) + 0.5)) - 1))
    return xs[k]


class Client:
    def __init__(self, url, token):
        u = urllib.parse.urlparse(url)
        self.conn = http.client.HTTPConnection(u.hostname, u.port or 80)
        self.headers = {"Authorization": "Bearer " + token}

    def search(self, query, conversation=None, before_id=None):
        q = {"q": query}
        if conversation:
            q["conversation"] = conversation
        if before_id:
            q["before_id"] = str(before_id)
        path = "/api/search?" + urllib.parse.urlencode(q)
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        r = self.conn.getresponse()
        body = r.read()
        dt = (time.perf_counter() - t0) * 1000
        if r.status != 200:
            raise SystemExit(f"{path}: HTTP {r.status} {body[:300]!r}")
        return dt, json.loads(body)


def word_of_rank(rank, database):
    out = subprocess.run(
        ["psql", "-X", "-At", database, "-c", f"SELECT word FROM s_vocab WHERE rank = {rank}"],
        capture_output=True, text=True, check=True)
    return out.stdout.strip()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:3190")
    ap.add_argument("--token")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--database", default="postgres://postgres@127.0.0.1:5433/search10m",
                    help="to look up the words of @rankN")
    ap.add_argument("cases", nargs="*")
    a = ap.parse_args()
    token = a.token or subprocess.run(["pgchat", "token", "searcher"], capture_output=True,
                                      text=True, check=True).stdout.strip()
    cases = [tuple(c.split("=", 1)) for c in a.cases] or STANDARD
    client = Client(a.url, token)
    print(f"{'case':<22}{'query':<28}{'found':>6}{'more':>6}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}  ms")
    for name, spec in cases:
        parts = spec.split("&")
        query, opts = parts[0], dict(p.split("=", 1) for p in parts[1:])
        words = []
        for w in query.split(" "):
            if w.startswith("@rank"):
                w = word_of_rank(int(w[5:]), a.database)
            words.append(w)
        query = " ".join(words)
        conv, page = opts.get("conversation"), int(opts.get("page", "1"))

        def once():
            before, dt, reply = None, 0.0, None
            for _ in range(page):
                dt, reply = client.search(query, conv, before)
                if not reply["messages"]:
                    break
                before = reply["messages"][-1]["id"]
            return dt, reply

        once()  # warm-up
        times, reply = [], None
        for _ in range(a.runs):
            dt, reply = once()
            times.append(dt)
        print(f"{name:<22}{query[:27]:<28}{len(reply['messages']):>6}{str(reply['has_more']):>6}"
              f"{statistics.median(times):>9.2f}{percentile(times, 90):>9.2f}"
              f"{percentile(times, 99):>9.2f}{max(times):>9.2f}", flush=True)


if __name__ == "__main__":
    main()
