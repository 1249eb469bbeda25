"""Run the whole stack on one machine, as plain processes, under scripted load.

The reference model server, the sidecar in front of it, Prometheus with the generated rules and
Alertmanager delivering to a local webhook; then a scripted load (steady traffic, a model server
that hangs, a burst that fills the queue, a latency spike) so that every metric moves and alerts
fire. Rule windows are shrunk (GenerateOptions.window_scale) so the burn-rate alerts fire within
a minute instead of an hour. A share of the load is streamed chat completions to the server's
language model (tiny-llm), so the LLM dashboard's TTFT, TPOT and token panels fill too.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
import logging
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from inferwatch import generate
from inferwatch.generate import promql
from inferwatch.generate.options import GenerateOptions

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
WINDOW_SCALE = 1 / 60  # burn-rate windows: 1h -> 1m, 5m -> 5s
TEXT_MODEL = "text-classifier"
IMAGE_MODEL = "image-classifier"
CLASSIFIERS = (TEXT_MODEL, IMAGE_MODEL)
LLM_MODEL = "tiny-llm"
IMAGE_VALUES = 3 * 32 * 32
LLM_SHARE = 0.25  # of the load generator's requests: streamed chat completions
# The classifiers' versions (`inferwatch serve` serves 1, 2 and 3 of each): unversioned URLs
# reach DEFAULT_VERSION, which the sidecar is told too, so it labels them with it; these
# shares of the classifier requests name another version, so the overview's Versions row
# shows every version. The rest (most) are unversioned.
DEFAULT_VERSION = "1"
VERSION_SHARES = {"2": 0.15, "3": 0.15}
MAX_ALERT_LINES = 4  # the live view lists this many firing alerts, then "+N more"


@dataclass
class Ports:
    server: int = 8000
    sidecar: int = 8080
    admin: int = 9464
    prometheus: int = 9090
    alertmanager: int = 9093
    webhook: int = 9095

    def resolved(self) -> Ports:
        """The same ports, 0 replaced by a free one (for tests and parallel runs)."""
        values = {}
        for name in self.__dataclass_fields__:
            port = getattr(self, name)
            if port == 0:
                with socket.socket() as sock:
                    sock.bind((LOOPBACK, 0))
                    port = sock.getsockname()[1]
            values[name] = port
        return Ports(**values)


@dataclass
class Phase:
    """One part of the scripted load."""

    name: str
    share: float  # of the whole run
    concurrency: int
    describe: str
    hang_server: float = 0.0  # seconds the model server is stopped at the phase's start
    pause_every: float = 0.0  # latency spike: stop the server briefly, this often
    batch: tuple[int, int] = (1, 4)


PHASES = (
    Phase("steady", 0.25, 4, "steady traffic to both models"),
    Phase(
        "hang",
        0.2,
        8,
        "the model server hangs: timeouts burn the error budget",
        hang_server=0.8,
    ),
    Phase("burst", 0.2, 96, "a burst that fills the sidecar's queue", batch=(8, 32)),
    Phase("slow", 0.2, 8, "a latency spike (the server stalls now and then)", pause_every=0.6),
    Phase("calm", 0.15, 2, "back to calm"),
)


@dataclass
class ClientStats:
    """What the load generator saw, for the summary when Prometheus is not there."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)

    def add(self, status: int, seconds: float) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(seconds)


class Webhook:
    """Alertmanager's receiver: logs every notification and keeps them.

    It serves from its own thread, so a load generator keeping the event loop busy cannot
    delay Alertmanager's notifications.
    """

    def __init__(self, path: Path, port: int) -> None:
        self.path = path
        self.alerts: list[dict[str, Any]] = []
        self._status: dict[str, str] = {}  # last status logged, per alert
        self._lock = threading.Lock()  # notifications for several groups may arrive at once
        webhook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    webhook.receive(json.loads(self.rfile.read(length)))
                except (ValueError, KeyError, TypeError):
                    self.send_response(400)
                else:
                    self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the alerts are logged, not the requests

        self._server = http.server.ThreadingHTTPServer((LOOPBACK, port), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def receive(self, doc: dict[str, Any]) -> None:
        with self._lock, self.path.open("a") as out:
            for alert in doc["alerts"]:
                self.alerts.append(alert)
                out.write(json.dumps(alert) + "\n")
                # A notification repeats the group's other alerts: log only what changed.
                labels = alert["labels"]
                key = alert.get("fingerprint") or json.dumps(labels, sort_keys=True)
                if self._status.get(key) != alert["status"]:
                    self._status[key] = alert["status"]
                    log.info(
                        "alert %s: %s (%s) for %s",
                        alert["status"],
                        labels.get("alertname"),
                        labels.get("severity"),
                        labels.get("model_name") or labels.get("pod") or "-",
                    )

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Processes:
    """Child processes started in order and stopped in reverse, always."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.running: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        out = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.running.append((name, proc))
        with (self.logs / "pids").open("a") as pids:  # for whoever checks they all ended
            pids.write(f"{name} {proc.pid}\n")
        return proc

    def get(self, name: str) -> subprocess.Popen[bytes]:
        return next(proc for n, proc in self.running if n == name)

    def stop_all(self, timeout: float = 20.0) -> None:
        for _, proc in reversed(self.running):
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
                proc.terminate()
        deadline = time.monotonic() + timeout
        for name, proc in reversed(self.running):
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in time; killing it", name)
                proc.kill()
                proc.wait()
        self.running.clear()


def tool(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


def write_configs(workdir: Path, ports: Ports) -> GenerateOptions:
    """The generated rules and Alertmanager config, plus a scrape config, for this run."""
    options = GenerateOptions(
        namespace="demo",
        window_scale=WINDOW_SCALE,
        alert_webhook_url=f"http://{LOOPBACK}:{ports.webhook}/alerts",
    )
    files = generate.render(options)
    for name in (generate.RECORDING_RULES, generate.ALERTING_RULES, generate.ALERTMANAGER):
        (workdir / Path(name).name).write_text(files[name])
    # The same labels a PodMonitor gives in Kubernetes, so every rule and panel works as there.
    labels = {"namespace": "demo", "pod": "model-server-0"}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [Path(generate.RECORDING_RULES).name, Path(generate.ALERTING_RULES).name],
        "alerting": {
            "alertmanagers": [
                {"static_configs": [{"targets": [f"{LOOPBACK}:{ports.alertmanager}"]}]}
            ]
        },
        "scrape_configs": [
            {
                # The sidecar's admin /metrics: its own families plus the server's, merged.
                "job_name": "inferwatch",
                "static_configs": [{"targets": [f"{LOOPBACK}:{ports.admin}"], "labels": labels}],
            }
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    return options


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{what} did not come up within {timeout:.0f} s")


async def served_versions(session: aiohttp.ClientSession, server: str, model: str) -> list[str]:
    """The versions of ``model`` the server serves (its V2 metadata; a version that cannot
    be built on this machine is left out), or none when that cannot be read."""
    try:
        async with session.get(f"{server}/v2/models/{model}") as response:
            if response.status != 200:
                return []
            versions = (await response.json()).get("versions")
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return []
    if not isinstance(versions, list):
        return []
    return [str(v) for v in versions]


async def http_ok(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
            return response.status == 200
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return False


def infer_path(model: str, version: str | None = None) -> str:
    """The Open Inference Protocol path of ``model``, of ``version`` when one is named."""
    if version is None:
        return f"/v2/models/{model}/infer"
    return f"/v2/models/{model}/versions/{version}/infer"


def text_request(
    rng: random.Random, batch: int, version: str | None = None
) -> tuple[str, dict[str, Any]]:
    words = ["goal", "rates", "vaccine", "election", "film", "chip", "league", "market"]
    texts = [" ".join(rng.choices(words, k=6)) for _ in range(batch)]
    body = {"inputs": [{"name": "text", "shape": [batch], "datatype": "BYTES", "data": texts}]}
    return infer_path(TEXT_MODEL, version), body


_IMAGE = [round(random.Random(5).random(), 3) for _ in range(IMAGE_VALUES)]


def image_request(
    rng: random.Random, batch: int, version: str | None = None
) -> tuple[str, dict[str, Any]]:
    data = _IMAGE * batch  # one fixed image: cheap to send
    body = {
        "inputs": [{"name": "image", "shape": [batch, 3, 32, 32], "datatype": "FP32", "data": data}]
    }
    return infer_path(IMAGE_MODEL, version), body


def chat_request(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """A streamed chat completion: usage in the stream, and a stop string now and then so
    that both finish reasons (stop, length) show."""
    topics = ["the weather", "GPUs", "batching", "the news", "a recipe", "football"]
    body: dict[str, Any] = {
        "model": LLM_MODEL,
        "messages": [{"role": "user", "content": f"Tell me about {rng.choice(topics)}."}],
        "max_tokens": rng.randint(16, 64),
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if rng.random() < 0.4:
        body["stop"] = ["."]
    return "/v1/chat/completions", body


class Load:
    """The scripted load: a pool of clients whose concurrency each phase sets.

    ``versions``: the versions the server serves of each classifier (its V2 metadata); a
    share of each one's requests (:data:`VERSION_SHARES`) names one of them, the rest are
    unversioned. None known: every request is unversioned.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        proxy: str,
        stats: ClientStats,
        versions: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        self.session = session
        self.proxy = proxy
        self.stats = stats
        self.rng = random.Random(11)
        self.phase = PHASES[0]
        self.versions = {model: frozenset(served) for model, served in (versions or {}).items()}

    def version(self, model: str) -> str | None:
        """The version a classifier request names: None (unversioned) for most."""
        served = self.versions.get(model, frozenset())
        pick = self.rng.random()
        for version, share in VERSION_SHARES.items():
            if pick < share:
                return version if version in served else None
            pick -= share
        return None

    async def client(self, index: int, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if index >= self.phase.concurrency:
                await asyncio.sleep(0.05)
                continue
            low, high = self.phase.batch
            batch = self.rng.randint(low, high)
            pick = self.rng.random()
            if pick < LLM_SHARE:
                path, body = chat_request(self.rng)
            elif pick < LLM_SHARE + 0.25:
                version = self.version(IMAGE_MODEL)
                path, body = image_request(self.rng, max(1, batch // 4), version)
            else:
                path, body = text_request(self.rng, batch, self.version(TEXT_MODEL))
            started = time.monotonic()
            try:
                async with self.session.post(self.proxy + path, json=body) as response:
                    await response.read()  # a stream: every chunk, to data: [DONE]
                    status = response.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = 0
            self.stats.add(status, time.monotonic() - started)
            if status == 503:
                await asyncio.sleep(0.05)  # honour the back-off a little, as clients should
            elif self.phase.concurrency <= 4:
                await asyncio.sleep(0.02)


@dataclass
class Summary:
    rps: float | None = None
    p95_ms: float | None = None
    queue: float | None = None
    errors: float | None = None
    firing: list[str] = field(default_factory=list)


async def prometheus_summary(session: aiohttp.ClientSession, prometheus: str) -> Summary:
    queries = promql.demo_summary("10s")
    summary = Summary()
    for key, expr in queries.items():
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, KeyError, IndexError):
            async with session.get(
                f"{prometheus}/api/v1/query",
                params={"query": expr},
                timeout=aiohttp.ClientTimeout(total=2),
            ) as response:
                result = (await response.json())["data"]["result"]
                value = float(result[0]["value"][1])
                setattr(summary, key, value if value == value else None)  # NaN: no data
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, KeyError):
        async with session.get(
            f"{prometheus}/api/v1/alerts", timeout=aiohttp.ClientTimeout(total=2)
        ) as response:
            alerts = (await response.json())["data"]["alerts"]
            summary.firing = sorted(
                {
                    f"{a['labels']['alertname']} ({a['labels'].get('severity', '')})"
                    for a in alerts
                    if a["state"] == "firing"
                }
            )
    return summary


def client_summary(stats: ClientStats) -> Summary:
    """Since the start, from the load generator's side: when there is no Prometheus."""
    recent = sorted(stats.latencies[-200:])
    elapsed = max(1e-9, time.monotonic() - stats.started)
    errors = sum(n for status, n in stats.statuses.items() if status == 0 or status >= 500)
    p95 = recent[int(0.95 * (len(recent) - 1))] * 1000 if recent else None
    return Summary(rps=len(stats.latencies) / elapsed, p95_ms=p95, errors=errors / elapsed)


def summary_table(phase: Phase, summary: Summary, stats: ClientStats, source: str) -> Any:
    from rich.table import Table

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    table = Table(title=f"phase: {phase.name} — {phase.describe}", title_justify="left")
    for column in ("req/s", "p95 ms", "queue", "errors/s"):
        table.add_column(column, justify="right", no_wrap=True, min_width=6)
    table.add_column("alerts firing")
    table.add_column("responses (status: count)")
    seen = ", ".join(f"{s or 'failed'}: {n}" for s, n in sorted(stats.statuses.items()))
    firing = [name.removeprefix("Inference") for name in summary.firing]
    if len(firing) > MAX_ALERT_LINES:  # keep the view short enough for a 24-line terminal
        firing = [*firing[: MAX_ALERT_LINES - 1], f"+{len(firing) - MAX_ALERT_LINES + 1} more"]
    table.add_row(
        fmt(summary.rps, ".1f"),
        fmt(summary.p95_ms, ".0f"),
        fmt(summary.queue, ".0f"),
        fmt(summary.errors, ".2f"),
        "\n".join(firing) or "none",
        seen or "-",
    )
    table.caption = f"from {source}"
    return table


class _ConsoleLogHandler(logging.Handler):
    """Writes log records through a rich console, so that a live view redraws below them."""

    def __init__(
        self,
        console: Any,
        formatter: logging.Formatter | None,
        level: int,
        writing: threading.Lock,
    ) -> None:
        super().__init__(level)
        self.console = console
        self.writing = writing
        if formatter is not None:
            self.setFormatter(formatter)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from rich.text import Text

            line = Text(self.format(record))
            with self.writing:
                self.console.print(line)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def logs_through(console: Any, writing: threading.Lock) -> Iterator[None]:
    """While in the block, the root logger's terminal handlers write through ``console``,
    each line while holding ``writing``.

    A rich ``Live`` redraws its view by moving the cursor up as many lines as it last drew.
    logging's StreamHandler holds the real stderr (taken when logging was configured, so
    Live's redirection of sys.stderr misses it) and wrote its lines into the middle of the
    view: each redraw then started too low and left the view's top lines (progress, phase,
    table header) behind, a partial copy per log line. Through the console, Live prints the
    lines above the view and redraws it below them.

    Every write to the terminal holds ``writing``: rich works out how far up to move the
    cursor before it takes the console's lock to write, so a log line from another thread
    written between a redraw's reckoning and its write left a stale copy of the view's top.
    """
    root = logging.getLogger()
    terminals = {sys.__stderr__, sys.__stdout__, sys.stderr, sys.stdout}
    swapped = [
        h
        for h in root.handlers
        if type(h) is logging.StreamHandler and getattr(h, "stream", None) in terminals
    ]
    replacements = [_ConsoleLogHandler(console, h.formatter, h.level, writing) for h in swapped]
    for old, new in zip(swapped, replacements, strict=True):
        root.removeHandler(old)
        root.addHandler(new)
    try:
        yield
    finally:
        for old, new in zip(swapped, replacements, strict=True):
            root.removeHandler(new)
            root.addHandler(old)


class LiveView:
    """The demo's live terminal view: a progress bar and the summary table, redrawn in place
    with the log lines printed above it. ``with LiveView(console, total) as view: ...``.

    Redrawn by ``show`` only, not by rich's refresh thread, so that each redraw and each log
    line are written whole, one after the other, under one lock."""

    def __init__(self, console: Any, total: float) -> None:
        from rich.live import Live
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn(), console=console
        )
        self.task = self.progress.add_task("load", total=total)
        # Cropped, never taller than the terminal: Live cannot move the cursor above the
        # screen's top to redraw a taller view.
        self.live = Live(console=console, auto_refresh=False, vertical_overflow="crop")
        self.writing = threading.Lock()
        self._logs: contextlib.ExitStack | None = None

    def __enter__(self) -> LiveView:
        self._logs = contextlib.ExitStack()
        self._logs.enter_context(logs_through(self.console, self.writing))
        with self.writing:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            with self.writing:
                self.live.__exit__(*exc)
        finally:
            if self._logs is not None:
                self._logs.close()

    def phase(self, phase: Phase) -> None:
        self.progress.update(self.task, description=f"{phase.name:7}")

    def show(
        self,
        phase: Phase,
        summary: Summary,
        stats: ClientStats,
        source: str,
        completed: float,
    ) -> None:
        from rich.console import Group

        self.progress.update(self.task, completed=completed)
        view = Group(self.progress, summary_table(phase, summary, stats, source))
        with self.writing:
            self.live.update(view, refresh=True)


async def hang(proc: subprocess.Popen[bytes], seconds: float) -> None:
    """Stop the model server for a while: it neither answers nor dies, as a hung GPU does."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(seconds)
        finally:
            proc.send_signal(signal.SIGCONT)


@dataclass
class DemoResult:
    workdir: Path
    alerts: list[dict[str, Any]]
    png: Path | None
    statuses: dict[int, int]
    pngs: list[Path] = field(default_factory=list)  # every dashboard rendered
    replay: Path | None = None  # the HPA replayed over the run (replay.png)


def phases_for(duration: float) -> Iterator[tuple[Phase, float]]:
    for phase in PHASES:
        yield phase, phase.share * duration


async def run_phase(
    phase: Phase,
    seconds: float,
    server: subprocess.Popen[bytes],
    show: Callable[[Phase], Awaitable[None]],
) -> None:
    """Hold one phase for ``seconds``, misbehaving as it says, refreshing the display."""
    end = time.monotonic() + seconds
    if phase.hang_server:
        await hang(server, phase.hang_server * seconds)
    while time.monotonic() < end:
        if phase.pause_every:
            await hang(server, 0.35)
            await asyncio.sleep(phase.pause_every)
        else:
            await asyncio.sleep(1.0)
        await show(phase)


async def run_demo(
    workdir: Path,
    ports: Ports,
    duration: float,
    device: str = "cpu",
    render_png: bool = True,
    repeat: bool = False,
) -> DemoResult:
    """Start everything, drive the load, render the overview, stop everything."""
    from rich.console import Console

    console = Console(stderr=False)
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    options = write_configs(workdir, ports)
    prometheus_bin = tool("prometheus")
    alertmanager_bin = tool("prometheus-alertmanager", "alertmanager")
    python = sys.executable
    procs = Processes(logs)
    webhook = Webhook(workdir / "alerts-received.jsonl", ports.webhook)
    # SIGTERM stops the demo as Ctrl-C does: every child process is stopped, none left behind.
    main_task = asyncio.current_task()
    assert main_task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    stats = ClientStats()
    png: Path | None = None
    pngs: list[Path] = []
    replayed: Path | None = None
    try:
        webhook.start()
        procs.start(
            "server",
            [
                *(python, "-m", "inferwatch", "serve", "--host", LOOPBACK),
                *("--port", str(ports.server), "--device", device),
                *("--model-size", "tiny", "--max-queue-size", "256"),
                *("--default-version", DEFAULT_VERSION),
            ],
        )
        procs.start(
            "sidecar",
            [
                *(python, "-m", "inferwatch", "sidecar"),
                *("--upstream", f"http://{LOOPBACK}:{ports.server}"),
                *("--listen", f"{LOOPBACK}:{ports.sidecar}"),
                # what the server answers unversioned URLs with: label them so
                *("--default-version", DEFAULT_VERSION),
                *("--admin", f"{LOOPBACK}:{ports.admin}"),
                # a small admission queue, so the burst phase fills it
                *("--max-concurrency", "8", "--max-queue", "48", "--queue-timeout", "2"),
                # a short upstream timeout, so the hang phase produces timeouts quickly
                *("--upstream-timeout", "1", "--ready-interval", "0.5"),
                *("--drain-quiet-period", "0", "--drain-timeout", "5"),
                # Prometheus scrapes every second: while the server hangs, give up on its own
                # /metrics quickly so the sidecar's (the timeouts) still arrive in time.
                *("--scrape-timeout", "0.3"),
            ],
        )
        if alertmanager_bin:
            procs.start(
                "alertmanager",
                [
                    alertmanager_bin,
                    f"--config.file={workdir / Path(generate.ALERTMANAGER).name}",
                    f"--storage.path={workdir / 'alertmanager'}",
                    f"--web.listen-address={LOOPBACK}:{ports.alertmanager}",
                    "--cluster.listen-address=",
                ],
            )
        if prometheus_bin:
            procs.start(
                "prometheus",
                [
                    prometheus_bin,
                    f"--config.file={workdir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={workdir / 'prometheus'}",
                    f"--web.listen-address={LOOPBACK}:{ports.prometheus}",
                    "--enable-feature=exemplar-storage",
                ],
            )
        else:
            console.print(
                "[yellow]Prometheus is not installed (Debian: apt-get install prometheus "
                "prometheus-alertmanager); running the rest without it.[/]"
            )
        server_url = f"http://{LOOPBACK}:{ports.server}"
        proxy = f"http://{LOOPBACK}:{ports.sidecar}"
        prometheus = f"http://{LOOPBACK}:{ports.prometheus}"
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await wait_until(
                lambda: http_ok(session, f"{server_url}/v2/health/ready"), 120, "the model server"
            )
            await wait_until(lambda: http_ok(session, f"{proxy}/ready"), 30, "the sidecar")
            if prometheus_bin:
                await wait_until(
                    lambda: http_ok(session, f"{prometheus}/-/ready"), 30, "Prometheus"
                )
            console.print(
                "\n[bold]inferwatch demo[/] is running:\n"
                f"  model server     {server_url}/v2/models/{TEXT_MODEL}\n"
                f"  sidecar (proxy)  {proxy}  (send inferences here)\n"
                f"  sidecar metrics  http://{LOOPBACK}:{ports.admin}/metrics\n"
                + (f"  Prometheus       {prometheus}/alerts\n" if prometheus_bin else "")
                + (
                    f"  Alertmanager     http://{LOOPBACK}:{ports.alertmanager}\n"
                    if alertmanager_bin
                    else ""
                )
                + f"  alerts received  {webhook.path}\n"
                f"  logs             {logs}\n"
            )
            versions = {m: await served_versions(session, server_url, m) for m in CLASSIFIERS}
            load = Load(session, proxy, stats, versions)
            stop = asyncio.Event()
            clients = [
                asyncio.create_task(load.client(i, stop))
                for i in range(max(p.concurrency for p in PHASES))
            ]
            view = LiveView(console, duration)
            begun = time.monotonic()
            load_started = time.time()

            async def show(phase: Phase) -> None:
                if prometheus_bin:
                    summary = await prometheus_summary(session, prometheus)
                    source = "Prometheus, last 10 s"
                else:
                    summary = client_summary(stats)
                    source = "the load generator (no Prometheus)"
                elapsed = time.monotonic() - begun
                view.show(phase, summary, stats, source, elapsed % duration if repeat else elapsed)

            interrupted = False
            try:
                with view:
                    while True:
                        for phase, seconds in phases_for(duration):
                            load.phase = phase
                            view.phase(phase)
                            await run_phase(phase, seconds, procs.get("server"), show)
                        if not repeat:
                            break
            except asyncio.CancelledError:
                interrupted = True  # Ctrl-C: still render the preview and stop cleanly
            finally:
                stop.set()
                await asyncio.gather(*clients, return_exceptions=True)
            if prometheus_bin and alertmanager_bin and not interrupted:
                await wait_for_delivery(session, prometheus, webhook)
            if prometheus_bin and render_png:
                try:
                    pngs = await asyncio.to_thread(render_previews, prometheus, workdir, duration)
                    png = pngs[0]
                    for path in pngs:
                        console.print(f"dashboard preview: {path}")
                except ImportError:
                    console.print("no PNG preview: pip install 'inferwatch[render]' (matplotlib)")
            if prometheus_bin and not interrupted:
                replayed = await asyncio.to_thread(
                    replay_run, prometheus, workdir, options, load_started, console, render_png
                )
            if interrupted:
                raise asyncio.CancelledError
    finally:
        procs.stop_all()
        webhook.close()
    return DemoResult(workdir, webhook.alerts, png, dict(stats.statuses), pngs, replayed)


async def wait_for_delivery(
    session: aiohttp.ClientSession, prometheus: str, webhook: Webhook, timeout: float = 30.0
) -> None:
    """Give Alertmanager its group_wait: stop once every firing alert reached the webhook."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        firing = {
            name.split(" (")[0] for name in (await prometheus_summary(session, prometheus)).firing
        }
        delivered = {a["labels"]["alertname"] for a in webhook.alerts if a["status"] == "firing"}
        if firing <= delivered:
            return
        await asyncio.sleep(1.0)


PREVIEWS = (("inferwatch-overview", "overview.png"), ("inferwatch-llm", "llm.png"))


def render_previews(prometheus: str, workdir: Path, duration: float) -> list[Path]:
    """The overview as overview.png, then the LLM dashboard as llm.png when the generator
    has one (uid inferwatch-llm); the overview first."""
    from inferwatch.generate import dashboards
    from inferwatch.render import render_dashboard

    generated = dashboards.dashboards(GenerateOptions())
    written = []
    for uid, name in PREVIEWS:
        dashboard = generated.get(f"{uid}.json")
        if dashboard is None:
            continue
        written.append(
            render_dashboard(
                dashboard,
                prometheus,
                workdir / name,
                minutes=max(1.0, duration / 60 + 0.5),
                rate_interval="10s",  # the demo scrapes every second
            )
        )
    return written


def replay_run(
    prometheus: str,
    workdir: Path,
    options: GenerateOptions,
    start: float,
    console: Any,
    render_png: bool = True,
) -> Path | None:
    """The generated HPA replayed over the run (inferwatch autoscale replay): its table
    printed, replay.png written."""
    from inferwatch.autoscale.replay import hpa_plan, replay_and_report
    from inferwatch.generate import autoscaling

    plan = hpa_plan(autoscaling.hpa(options), autoscaling.adapter_rules())
    out = workdir / "replay.png" if render_png else None
    try:
        _, png = replay_and_report(prometheus, plan, start, time.time(), out, console=console)
    except (OSError, RuntimeError) as exc:
        console.print(f"[yellow]no HPA replay: {exc}[/]")
        return None
    if png is not None:
        console.print(f"HPA replay: {png}")
    return png


def render_overview(prometheus: str, workdir: Path, duration: float) -> Path:
    return render_previews(prometheus, workdir, duration)[0]


# --- the command ----------------------------------------------------------------------------------


def add_arguments(parser: Any) -> None:
    parser.add_argument(
        "--duration",
        type=float,
        default=0.0,
        help="seconds of scripted load, then stop (default: repeat until Ctrl-C)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("inferwatch-demo"))
    parser.add_argument("--device", default="cpu", help="the model server's device (cpu, cuda)")
    parser.add_argument("--no-render", action="store_true", help="skip the PNG preview")
    defaults = Ports()
    for name in defaults.__dataclass_fields__:
        parser.add_argument(
            f"--{name}-port",
            type=int,
            default=getattr(defaults, name),
            help="(default %(default)s)",
        )


def run(args: Any) -> int:
    ports = Ports(**{name: getattr(args, f"{name}_port") for name in Ports.__dataclass_fields__})
    ports = ports.resolved()
    repeat = args.duration <= 0
    duration = 120.0 if repeat else args.duration
    logging.getLogger("matplotlib").setLevel(logging.WARNING)
    try:
        result = asyncio.run(
            run_demo(args.workdir, ports, duration, args.device, not args.no_render, repeat)
        )
        firing = sorted({a["labels"]["alertname"] for a in result.alerts})
        print(f"alerts delivered to the webhook: {', '.join(firing) or 'none'}")
        return 0
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("stopped")
        return 0
    except (RuntimeError, OSError) as exc:
        print(f"inferwatch demo: {exc} (logs in {args.workdir / 'logs'})", file=sys.stderr)
        return 1
