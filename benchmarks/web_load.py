"""Load on `llava-moslora web`: N concurrent clients asking questions about an image, on localhost.

    python benchmarks/web_load.py --model runs/quickstart/stage2               # 1, 8 and 32 clients
    python benchmarks/web_load.py --model CKPT --clients 1,4 --requests 20      # a quick run

Starts the web server (one process, as `scripts/web.sh` does) on a free port, then for each
client count N runs --requests questions spread over N threads, each thread its own
gradio_client session (a browser tab each), every question a new conversation (Clear, then the
question with the image of --image, default a 64 x 64 red square; Clear is not timed). A request is an error when it raises or its final status is not "done".
Bounded: each level stops after --requests or --max-seconds, whichever comes first. Prints, per
level, the requests, errors, p50 / p95 latency (queue wait included: Gradio runs one generation
at a time) and the server's RSS before and after. Targets: 0 errors at 32 clients; RSS growth
<= 10% over the run.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "How many shapes are in the image?"
TARGET_RSS_GROWTH = 0.10


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rss_mb(pid: int) -> float:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024


def start_server(models: list[str], port: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "llava_moslora", "web", "--port", str(port),
               *[a for m in models for a in ("--model", m)]]
    server = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while True:
        if server.poll() is not None:
            raise SystemExit(f"the web server exited: {server.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
            return server
        except OSError:
            if time.time() > deadline:
                server.kill()
                raise SystemExit("the web server did not come up in 300 s")
            time.sleep(0.5)


def run_level(url: str, image: str, clients: int, requests: int, max_seconds: float, tokens: int) -> dict:
    """`requests` questions over `clients` threads (each its own session); latencies and errors."""
    from gradio_client import Client, handle_file

    latencies, errors, lock = [], [], threading.Lock()
    remaining = [requests]
    connected = threading.Barrier(clients + 1)  # every session open before the clock starts
    stop_at = [float("inf")]

    def worker() -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as error:  # noqa: BLE001 - a failed connection is an error of the run
            with lock:
                errors.append(f"connect: {type(error).__name__}: {error}")
            connected.wait()
            return
        connected.wait()
        while True:
            with lock:
                if remaining[0] <= 0 or time.time() > stop_at[0]:
                    return
                remaining[0] -= 1
            try:
                client.predict(api_name="/clear")  # each question starts a conversation, as a new visitor's does
            except Exception:  # noqa: BLE001 - counted by the question that follows, if it fails too
                pass
            start = time.perf_counter()
            try:
                status = list(client.submit(QUESTION, handle_file(image), 0, 1, tokens, api_name="/ask"))[-1][-1]
                ok = status == "done"
            except Exception as error:  # noqa: BLE001 - counted and shown
                ok, status = False, f"{type(error).__name__}: {error}"
            with lock:
                latencies.append(time.perf_counter() - start)
                if not ok:
                    errors.append(str(status)[:200])

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.time() + 300 + max_seconds  # connecting may take a while; then the level's own bound
    connected.wait()
    stop_at[0] = time.time() + max_seconds
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    ordered = sorted(latencies)
    return {"clients": clients, "requests": len(latencies), "errors": len(errors), "wall_s": wall,
            "p50_s": statistics.median(ordered) if ordered else float("nan"),
            "p95_s": ordered[max(0, int(round(0.95 * len(ordered))) - 1)] if ordered else float("nan"),
            "first_errors": errors[:3]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--model", action="append", default=None,
                        help="checkpoint(s) to serve [runs/quickstart/stage2]")
    parser.add_argument("--clients", default="1,8,32", help="concurrent clients per level, comma-separated [1,8,32]")
    parser.add_argument("--requests", type=int, default=200, help="questions per level [200]")
    parser.add_argument("--max-seconds", type=float, default=600, help="a level stops after this long [600]")
    parser.add_argument("--tokens", type=int, default=16, help="max new tokens per answer [16]")
    parser.add_argument("--image", default=None, help="the image every question is about [a red square]")
    args = parser.parse_args(argv)
    models = args.model or [str(ROOT / "runs" / "quickstart" / "stage2")]
    with tempfile.TemporaryDirectory(prefix="web-load-") as scratch:
        image = args.image
        if image is None:
            from PIL import Image

            image = str(Path(scratch) / "red.png")
            Image.new("RGB", (64, 64), (220, 30, 30)).save(image)
        port = free_port()
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        server = start_server(models, port)
        try:
            url = f"http://127.0.0.1:{port}/"
            run_level(url, image, 1, 2, 60, args.tokens)  # warm-up: first generation, caches
            before = rss_mb(server.pid)
            rows = []
            for clients in (int(c) for c in args.clients.split(",")):
                rows.append({**run_level(url, image, clients, args.requests, args.max_seconds, args.tokens),
                             "rss_mb": rss_mb(server.pid)})
                print(f"  {rows[-1]}", flush=True)
            after = rss_mb(server.pid)
        finally:
            server.terminate()
            server.wait(timeout=60)
    print(f"\nserver: {', '.join(models)}; {os.cpu_count()} cpus; answers of up to {args.tokens} tokens\n")
    print("| clients | requests | errors | p50 s | p95 s | requests/s | server RSS after, MB |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | "
              f"{r['requests'] / r['wall_s']:.2f} | {r['rss_mb']:.0f} |")
    growth = (after - before) / before
    print(f"\nserver RSS {before:.0f} MB after warm-up, {after:.0f} MB at the end: {growth:+.1%} "
          f"(target <= {TARGET_RSS_GROWTH:.0%}); errors {sum(r['errors'] for r in rows)} (target 0)")
    for r in rows:
        for error in r["first_errors"]:
            print(f"  error at {r['clients']} clients: {error}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
