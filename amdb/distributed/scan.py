"""Cluster-wide scans: every node's pages merged in bytewise key order.

``DistributedCluster.scan`` (``amdb.distributed.client``) checks its arguments
and returns :func:`scan_merged`, a generator that asks every node
(``AmDbNode.scan_page``, through Ray) for a page of its keys at a time, merges
the pages in key order (``heapq.merge``) and yields only what every node has
got past. A node serves only the keys of slots it owns or is moving out, so
each key comes from exactly one node; when a reply shows that the table
changed meanwhile (or a node lagged), the scan refreshes the table and resumes
after the last key it yielded. Not a snapshot across nodes, but every key that
exists for the whole scan is seen exactly once, also while slots move.
"""
import heapq
import time

from amdb.errors import Error, NodeUnavailableError


def _successor(key):
    """The smallest key greater than ``key`` in bytewise order."""
    return key + b"\x00"


def _prefix_stop(prefix):
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def scan_merged(cluster, lo, hi, reverse, keys_only, page_size):
    """Yield the items (or keys) of ``cluster`` (a DistributedCluster) from ``lo``
    (inclusive) to ``hi`` (exclusive), None: unbounded, in key order or reversed,
    ``page_size`` keys per node and request."""
    cursor = None                       # last key yielded
    deadline = time.monotonic() + cluster._retry_timeout
    lags = 0

    def key_of(item):
        return item if keys_only else item[0]

    while True:
        view = cluster._view
        nodes = view[2]
        buffers = {n: [] for n in nodes}
        last = {n: None for n in nodes}      # last key a node examined
        done = {n: False for n in nodes}
        restart = False
        while not restart:
            wanted = [n for n in nodes if not buffers[n] and not done[n]]
            refs = []
            for n in wanted:
                edge = last[n]
                if edge is None:
                    s, e = lo, hi
                elif reverse:
                    s, e = lo, edge
                else:
                    s, e = _successor(edge), hi
                if s is not None and e is not None and s >= e:
                    done[n] = True
                    continue
                refs.append((n, nodes[n].scan_page.remote(s, e, reverse, keys_only, page_size)))
            for n, ref in refs:
                try:
                    reply_version, items, last_key, exhausted = cluster._get(n, ref)
                except NodeUnavailableError:
                    if not cluster._gone(n):
                        raise
                    restart = True
                    continue
                check = cluster._validated(view, n, reply_version)
                if check:
                    restart = True
                    if check < 0:
                        lags += 1
                    continue
                buffers[n] = items
                if last_key is not None:
                    last[n] = last_key
                done[n] = exhausted
            if restart:
                break
            live = [last[n] for n in nodes if not done[n]]
            if live:
                bound = max(live) if reverse else min(live)
            else:
                bound = None
            heads = []
            for n in nodes:
                buf = buffers[n]
                if bound is None:
                    take = len(buf)
                elif reverse:
                    take = next((i for i, it in enumerate(buf) if key_of(it) < bound), len(buf))
                else:
                    take = next((i for i, it in enumerate(buf) if key_of(it) > bound), len(buf))
                heads.append(buf[:take])
                buffers[n] = buf[take:]
            merged = heapq.merge(*heads, key=key_of, reverse=reverse)
            for item in merged:
                cursor = key_of(item)
                yield item
            if bound is None and all(done.values()):
                return
        if time.monotonic() >= deadline:
            raise Error("scan: the table kept changing (or a node lagged) for "
                        f"{cluster._retry_timeout}s", code="cluster_timeout")
        if lags:
            time.sleep(min(0.05, 0.0005 * (2 ** min(lags, 7))))
        cluster._refresh()
        # resume after the cursor: lo/hi shrink to what is left
        if cursor is not None:
            if reverse:
                hi = cursor
            else:
                lo = _successor(cursor)
