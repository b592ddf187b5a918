"""
Sum up a py-spy profile of rosteradmin (C{bench.run --profile FILE}):
where its CPU goes, by function and by kind of work.

    python -m bench.pyspysummary FILE [--top 30] [--per N] [--all-threads]

FILE holds py-spy's raw collapsed stacks (C{--format raw}): one line per
distinct stack, root first, frames separated by C{;}, then its sample
count; with py-spy's C{--threads} (the runner's default) the first frame
names the thread.  Only the main thread's samples are counted unless
C{--all-threads}: rosteradmin does all its work in the reactor's thread,
and py-spy takes the reactor's idle pool threads, waiting in
C{Condition.wait}, for busy ones at times (a whole profile of 2s once held
60 % of such samples, which C{/proc} showed were not CPU time).  py-spy
keeps samples of running threads only, so a share of the main thread's
samples is a share of its CPU time (its system time too: a sample inside
C{send} or C{epoll_wait} counts where the thread was running).  With
C{--per N} (the logins, or gets, the profile covers) each row also says how
many microseconds of CPU that is per login.  The runner writes
C{FILE.json} beside the profile with the CPU seconds C{/proc} counted for
rosteradmin over the recording and the logins (or gets) it covered: then
the samples are scaled to those seconds (py-spy also counts time a thread
waited for a core on a busy machine, see L{bench.run.Profiler}) and
C{--per} defaults to its logins; without it every sample is 1/rate seconds
(C{--rate}, 200 by default, as the runner records).

Three tables: functions by own time (the leaf frame of a sample), functions
by cumulative time (any frame of a sample, counted once per sample), and
own time by kind of work.  The kind of a sample is that of the innermost
frame that belongs to one (L{RULES}); frames of generic code (the standard
library's helpers, typing, zope) pass it to their caller, so C{len} called
from the JSON decoder counts as JSON.  The groups are the ones the login
path crosses: parsing and dispatching the incoming stanza, the web app
fetch (treq), the JSON and the L{Roster} built from it, the answer's XML,
logging, SQLite, Deferreds and coroutines, and the rest.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

#: (pattern searched in a frame "function (file:line)", group, detail); the
#: first that matches a frame decides.  Group C{None}: generic code, which
#: counts for its caller.
RULES: list[tuple[str, str | None, str]] = [
    # rosteradmin's own functions, by what they do on the login path.
    (r"^(\w+\.)?(parseRoster|_parseContact|_bareContactJID|_contactDomain|_checkPart|_checkBidi|_text|_internGroups"
     r"|__init__|_digestSum|_contactDigest|_version|byJID|__eq__|__hash__) \(.*rosteradmin/roster\.py",
     "JSON decode + Roster building", "rosteradmin.roster: validation, JIDs, sorting, version digest"),
    (r"^(\w+\.)?(queryXML|toXML) \(.*rosteradmin/roster\.py", "answer XML building/serialisation",
     "Roster.queryXML / Contact.toXML"),
    (r"rosteradmin/xmltext\.py", "JSON decode + Roster building", "rosteradmin.xmltext.carriesInXML"),
    (r"^(\w+\.)?(iqXML|attr|errorXML) \(.*rosteradmin/stanzas\.py", "answer XML building/serialisation",
     "rosteradmin.stanzas.iqXML"),
    (r"^(\w+\.)?(wrap|innerReply|innerError|replySender|_sendWrapped|_sendAnswer) \(.*rosteradmin/delegation\.py",
     "answer XML building/serialisation", "rosteradmin.delegation: wrap, innerReply, _sendWrapped"),
    (r"^(\w+\.)?(encode|answerRefusal|itemRefusal) \(.*rosteradmin/stanzalimit\.py",
     "answer XML building/serialisation", "rosteradmin.stanzalimit (encode, size checks)"),
    (r"^(\w+\.)?(IQRequest\.\w+|sendRequest) \(.*rosteradmin/stanzas\.py|rosteradmin/privilege\.py"
     r"|^StreamManager\.(request|_onIQResponse|send) \(",
     "other", "privileged iqs: the version promise of each answer (privilege.promiseCurrent, IQRequest, wokkel)"),
    (r"^(\w+\.)?(parseJID|_parseJID|findChild|markHandled) \(.*rosteradmin/stanzas\.py",
     "XML parsing of incoming stanzas", "JIDs and children of the request"),
    (r"stringprep|encodings/idna|unicodedata|twisted/words/protocols/jabber/jid\.py", None, ""),
    (r"^(\w+\.)?(unwrap|_onDelegatedRequest|_isOwn) \(.*rosteradmin/delegation\.py",
     "XML parsing of incoming stanzas", "rosteradmin.delegation: unwrap, dispatch"),
    (r"rosteradmin/state\.py", "SQLite/state", "rosteradmin.state (sqlite3)"),
    (r"sqlite3", "SQLite/state", "sqlite3"),
    (r"rosteradmin/logs\.py", "logging", "rosteradmin.logs"),
    (r"rosteradmin/fetcher\.py", "treq/HTTP client", "rosteradmin.fetcher"),
    (r"rosteradmin/slots\.py", "Deferred/coroutine overhead", "rosteradmin.slots (queues, locks)"),
    (r"rosteradmin/metrics\.py|prometheus_client", "other", "metrics (prometheus_client)"),
    (r"rosteradmin/", "other", "rosteradmin: request logic (rosterserver, backend, cache, fairness)"),
    # Libraries.
    (r"twisted/logger/|twisted/python/log\.py", "logging", "twisted.logger (events, filtering, formatting)"),
    (r"json/", "JSON decode + Roster building", "json"),
    (r"hashlib|blake2", "JSON decode + Roster building", "hashlib"),
    (r"cookiejar|CookieAgent|_scoped_cookiejar|_merge_cookies", "treq/HTTP client",
     "cookies (treq's CookieAgent and cookie jar, per request)"),
    (r"hyperlink/|idna/core\.py|idna/intranges\.py", "treq/HTTP client", "URL handling (hyperlink, idna) in treq"),
    (r"^(\w+\.)?(HTTPConnectionPool\._newConnection|HostnameEndpoint\.\w+|.*_resolver\.py)|twisted/_threads/"
     r"|twisted/python/threadpool\.py|twisted/internet/_resolver\.py",
     "treq/HTTP client", "new connections to the web app (HostnameEndpoint, getaddrinfo in a thread)"),
    (r"treq/", "treq/HTTP client", "treq"),
    (r"twisted/web/_newclient\.py", "treq/HTTP client", "twisted.web._newclient (HTTP/1.1 protocol)"),
    (r"twisted/web/client\.py", "treq/HTTP client", "twisted.web.client (Agent, pool)"),
    (r"twisted/web/http\.py", "treq/HTTP client", "twisted.web.http (header parsing)"),
    (r"twisted/web/|hyperlink/|urllib/", "treq/HTTP client", "twisted.web / hyperlink / urllib (other)"),
    (r"twisted/protocols/basic\.py|twisted/protocols/policies\.py", "treq/HTTP client",
     "twisted.protocols (LineReceiver of the HTTP client)"),
    (r"twisted/words/xish/xpath\.py|twisted/words/xish/utility\.py", "XML parsing of incoming stanzas",
     "xish dispatch (xpath observers)"),
    (r"^(\w+\.)?(toXml|serialize|_escape|escapeToXml) \(.*twisted/words/xish/domish\.py",
     "answer XML building/serialisation", "domish serialisation"),
    (r"twisted/words/xish/domish\.py|expat", "XML parsing of incoming stanzas", "domish + expat (parsing)"),

    (r"^(\w+\.)?(send) \(.*twisted/words/xish/xmlstream\.py", "other", "XmlStream.send (to the socket)"),
    (r"twisted/words/|wokkel/", "XML parsing of incoming stanzas", "xmlstream/wokkel (stream, handlers)"),
    (r"twisted/internet/defer\.py|twisted/python/failure\.py|asyncio/", "Deferred/coroutine overhead",
     "twisted.internet.defer (Deferreds, coroutines)"),
    (r"twisted/internet/|twisted/python/", "other", "reactor and socket I/O (twisted.internet)"),
    (r"^<module>|twistd|twisted/application/|twisted/scripts/", "other", "reactor and socket I/O (twisted.internet)"),
    # Generic: counts for the caller.
    (r"typing\.py|functools\.py|collections/|enum\.py|zope/|interface/|attr/|abc\.py|contextlib\.py|_weakrefset|"
     r"weakref\.py|copy\.py|re/|_collections_abc|threading\.py|queue\.py", None, ""),
]

_COMPILED = [(re.compile(pattern), group, detail) for pattern, group, detail in RULES]

GROUPS = ("XML parsing of incoming stanzas", "treq/HTTP client", "JSON decode + Roster building",
          "answer XML building/serialisation", "logging", "SQLite/state", "Deferred/coroutine overhead", "other")


def classify(frames: list[str]) -> tuple[str, str]:
    """
    The group and detail of a sample's own time: those of its innermost
    frame that is not generic code.
    """
    for frame in reversed(frames):
        for pattern, group, detail in _COMPILED:
            if pattern.search(frame):
                if group is None:
                    break  # generic: ask the caller
                return group, detail
    return "other", "unclassified: " + (frames[-1] if frames else "?")


def function(frame: str) -> str:
    """
    A frame without its line number, with its path from the package on.
    """
    frame = re.sub(r":\d+\)$", ")", frame)
    return re.sub(r"\(.*?(site-packages/|lib/python3\.\d+/|/work/main/)", "(", frame)


def load(path: Path, allThreads: bool = False) -> list[tuple[list[str], int]]:
    """
    The stacks of a raw profile and their sample counts, without the
    thread frame; only the main thread's unless C{allThreads}.
    """
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[0].startswith("thread ("):
            if not allThreads and not frames[0].endswith("MainThread"):
                continue
            frames = frames[1:]
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--per", type=int, default=0, help="logins (or gets) the profile covers")
    parser.add_argument("--rate", type=int, default=200, help="py-spy's samples per second")
    parser.add_argument("--all-threads", action="store_true", help="count every thread's samples")
    parser.add_argument("--callers", metavar="TEXT",
                        help="also list the stacks (5 frames up) through frames holding TEXT, by samples")
    args = parser.parse_args()
    stacks = load(args.profile, args.all_threads)
    total = sum(count for _, count in stacks)
    sidecar = args.profile.with_name(args.profile.name + ".json")
    measured = json.loads(sidecar.read_text()) if sidecar.exists() else None
    secondsPerSample = 1 / args.rate
    unit = "get" if measured is not None and measured["what"].endswith("gets") else "login"
    if measured is not None:
        args.per = args.per or measured["work"]
        secondsPerSample = measured["cpu_seconds"] / total
        print(f"{sidecar}: {measured['what']}: {measured['work']}; /proc CPU {measured['cpu_seconds']:.2f} s over "
              f"{measured['wall_seconds']:.1f} s; py-spy's samples would say {total / args.rate:.2f} s: "
              f"each sample counts {secondsPerSample * 1000:.2f} ms")
    own: Counter[str] = Counter()
    cumulative: Counter[str] = Counter()
    groups: Counter[str] = Counter()
    details: Counter[tuple[str, str]] = Counter()
    for frames, count in stacks:
        names = [function(f) for f in frames]
        own[names[-1]] += count
        for name in set(names):
            cumulative[name] += count
        group, detail = classify(frames)
        groups[group] += count
        details[group, detail] += count

    def cell(count: int) -> str:
        share = f"{count * 100 / total:5.1f} %"
        if args.per:
            share += f" {count * 1e6 * secondsPerSample / args.per:7.0f} µs/{unit}"
        return share

    print(f"{total} samples ({total * secondsPerSample:.2f} s of CPU)"
          + (f", {total * 1000 * secondsPerSample / args.per:.2f} ms per {unit} over {args.per}" if args.per else ""))
    for title, counter in (("own time", own), ("cumulative time", cumulative)):
        print(f"\ntop {args.top} functions by {title}")
        for name, count in counter.most_common(args.top):
            print(f"  {cell(count)}  {name}")
    if args.callers:
        paths: Counter[str] = Counter()
        for frames, count in stacks:
            names = [function(f) for f in frames]
            for index, name in enumerate(names):
                if args.callers in name:
                    paths[" <- ".join(reversed(names[max(0, index - 4):index + 1]))] += count
                    break
        print(f"\nstacks through {args.callers!r} (innermost such frame first, then its callers)")
        for path, count in paths.most_common(args.top):
            print(f"  {cell(count)}  {path}")
    print("\nown time by kind of work")
    for group in sorted(GROUPS, key=lambda g: -groups[g]):
        print(f"  {cell(groups[group])}  {group}")
        for (g, detail), count in sorted(details.items(), key=lambda item: -item[1]):
            if g == group and count * 1000 >= total:
                print(f"      {cell(count)}  {detail}")


if __name__ == "__main__":
    main()
