"""The web page (``--web``): a thin client of the face (``face.Face``), served by Starlette on uvicorn.

    GET  /                 the page (static/index.html): piano roll, state, controls, keyboard, sessions
    GET  /state            JSON: tempo, temperature, stability, key, key hold, mode, late steps, sessions, ...
    WS   /ws               out: {"type": "notes", "events": [[age s, who (0 its own, 1 the player's), pitch,
                           velocity (0: off), channel], ...]}, {"type": "state", ...}, {"type": "error", ...};
                           in: {"type": "control", "name": ..., "value": ...}, {"type": "note", "note": ...,
                           "velocity": ...}
    POST /control          the same controls as JSON, for scripts
    GET  /sessions/N.mid   this run's session files (N from /state), and .png (a piano roll) and .wav (rendered
                           as ``improviser render`` does), both made on demand in another process

Threads: uvicorn runs its own event loop on a thread of its own (``improviser-web``) in the worker process,
never in the real-time one. The face's pump thread hands it the notes and the state through ``_inbox`` (a
bounded deque: appended there, popped here); every connection has a bounded outbox, so a slow or gone browser
loses its own events (counted in ``dropped``) and nothing else waits.

Security: it listens on 127.0.0.1 unless told otherwise (``--web-host``); any other host needs a token (made at
start and printed in the address, or ``--web-token``), which the page's address sets as a cookie. A request
whose Host is not this server's (DNS rebinding) or whose Origin is not the page's own (a page elsewhere driving
the instrument) is refused, the WebSocket included. Controls are checked and rate-limited by the face; only
this run's session files are served, by their number.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import parse_qs

from ..errors import ImproviserError
from .face import PUMP_SECONDS, ControlError, Face

DEFAULT_PORT = 8765
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
COOKIE = "improviser_token"
OUTBOX = 256  # messages waiting for one browser; more are dropped
INBOX = 512  # the pump's deliveries waiting for the loop
WS_MAX_BYTES = 16 * 1024  # the largest message a browser may send
MADE_SECONDS = 120.0  # the longest a picture or a WAV of a session may take to make
PAGE = Path(__file__).with_name("static") / "index.html"


def listen_socket(host: str, port: int, what: str = "--web-port") -> socket.socket:
    """A TCP socket bound and listening on ``host``:``port``; one-line ImproviserError if it cannot be."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError):
        raise ImproviserError(f"--web-host {host!r}: not a name or address this machine knows; give an address of "
                              "this machine, e.g. 127.0.0.1 (the default) or 0.0.0.0 for every network") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # (as uvicorn does: a closed run's port is free)
        sock.bind(address)
        sock.listen(64)
    except OSError as e:
        sock.close()
        if e.errno == 98:  # EADDRINUSE
            raise ImproviserError(f"{what} {port}: the port is in use by another program (another improviser?); "
                                  "give another port") from None
        if e.errno == 99:  # EADDRNOTAVAIL
            raise ImproviserError(f"--web-host {host!r}: not an address of this machine") from None
        raise ImproviserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    return sock


def check_web(host: str, port: int, token: str | None) -> None:
    """Bad web options, one line, before any port opens (the worker binds for real)."""
    if not 0 <= port <= 65535:
        raise ImproviserError(f"--web-port {port}: give 1..65535 (default {DEFAULT_PORT})")
    if token is not None and len(token) < 8:
        raise ImproviserError("--web-token: give at least 8 characters (or leave it out: one is made at start)")
    listen_socket(host, port).close()


class WebFace:
    """The web server beside the engine: ``start()`` binds (already done here) and serves on its own thread."""

    def __init__(self, face: Face, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: str | None = None):
        self.face = face
        self.host = host
        self.local = host in LOCAL_HOSTS
        # A non-local server always needs a token; a local one only if given one.
        self.token = token if token is not None or self.local else secrets.token_urlsafe(18)
        self.sock = listen_socket(host, port)
        self.port = self.sock.getsockname()[1]
        self.any_host = host in ("0.0.0.0", "::")  # (then the token is the guard)
        names = {*LOCAL_HOSTS, host} if not self.any_host else set()
        self.hosts = {f"[{n}]:{self.port}" if ":" in n else f"{n}:{self.port}" for n in names}
        self.dropped = 0  # messages a browser was too slow for (loop thread)
        self._inbox: collections.deque = collections.deque(maxlen=INBOX)  # pump thread -> loop thread
        self._clients: set = set()  # the loop thread's only
        self._made = Path(tempfile.mkdtemp(prefix="improviser-web-"))  # pictures and WAVs made on demand
        self._making = None  # an asyncio.Lock: one at a time (loop thread)
        self._server = None
        self._thread: threading.Thread | None = None
        face.subscribe(self._deliver)

    @property
    def url(self) -> str:
        shown = "127.0.0.1" if self.any_host else (f"[{self.host}]" if ":" in self.host else self.host)
        return f"http://{shown}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def start(self) -> None:
        import uvicorn

        config = uvicorn.Config(_Guard(self._app(), self), log_level="warning", access_log=False, lifespan="off",
                                ws_max_size=WS_MAX_BYTES, ws_ping_interval=10, ws_ping_timeout=10,
                                timeout_graceful_shutdown=1)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="improviser-web",
                                        daemon=True)
        self._thread.start()

    async def _serve(self) -> None:
        self._making = asyncio.Lock()
        fanout = asyncio.get_running_loop().create_task(self._fanout())
        try:
            await self._server.serve(sockets=[self.sock])
        finally:
            fanout.cancel()

    def close(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(5)
        self.sock.close()
        shutil.rmtree(self._made, ignore_errors=True)

    # ---- events out ----------------------------------------------------------------------------------------

    def _deliver(self, events: list, state: dict | None) -> None:
        """The face's pump thread: never blocks (a full inbox loses its oldest)."""
        self._inbox.append((events, state))

    async def _fanout(self) -> None:
        """The loop thread: the pump's deliveries, as JSON, into every browser's outbox."""
        while True:
            await asyncio.sleep(PUMP_SECONDS)
            out = []
            now = time.monotonic()
            events, state = [], None
            while self._inbox:
                got, changed = self._inbox.popleft()
                events += got
                state = changed if changed is not None else state
            if events:
                out.append(json.dumps({"type": "notes", "events": [[round(now - t, 4), who, p, v, ch]
                                                                   for t, who, p, v, ch in events]}))
            if state is not None:
                out.append(json.dumps({"type": "state", **state}))
            for text in out:
                for client in list(self._clients):
                    self._offer(client, text)

    def _offer(self, outbox: asyncio.Queue, text: str) -> None:
        try:
            outbox.put_nowait(text)
        except asyncio.QueueFull:
            self.dropped += 1

    # ---- the app -------------------------------------------------------------------------------------------

    def _app(self):
        from starlette.applications import Starlette
        from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
        from starlette.routing import Route, WebSocketRoute
        from starlette.websockets import WebSocketDisconnect

        page = PAGE.read_text()
        face = self.face

        async def index(request):
            response = HTMLResponse(page, headers={"Cache-Control": "no-store"})
            if self.token and request.query_params.get("token"):
                response.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return response

        async def state(request):
            return JSONResponse(face.state())

        async def control(request):
            try:
                body = json.loads(await request.body())
            except ValueError:
                body = None
            reply = self._handle(body, ("http", request.client.host if request.client else None))
            return JSONResponse(reply, status_code=400 if reply["type"] == "error" else 200)

        async def ws(websocket):
            await websocket.accept()
            outbox: asyncio.Queue = asyncio.Queue(OUTBOX)
            self._clients.add(outbox)
            self._offer(outbox, json.dumps({"type": "state", **face.state()}))

            async def send_loop():
                while True:
                    await websocket.send_text(await outbox.get())

            sender = asyncio.get_running_loop().create_task(send_loop())
            source = ("ws", id(outbox))
            try:
                while True:
                    text = await websocket.receive_text()
                    try:
                        body = json.loads(text)
                    except ValueError:
                        body = None
                    reply = self._handle(body, source)
                    if reply["type"] == "error":
                        self._offer(outbox, json.dumps(reply))
            except (WebSocketDisconnect, RuntimeError):
                pass
            finally:
                sender.cancel()
                self._clients.discard(outbox)

        async def session_file(request):
            index, kind = request.path_params["index"], request.path_params["kind"]
            found = face.session(index)
            if found is None or kind not in ("mid", "png", "wav"):
                return Response("no such session file in this run\n", status_code=404, media_type="text/plain")
            if kind == "mid":
                return FileResponse(found.path, media_type="audio/midi", filename=found.path.name)
            made = await self._made_file(found, kind)
            if made is None:
                return Response(f"could not make the {kind} of {found.path.name} (see the service's output)\n",
                                status_code=503, media_type="text/plain")
            return FileResponse(made, media_type="image/png" if kind == "png" else "audio/wav",
                                filename=found.path.with_suffix("." + kind).name)

        return Starlette(routes=[
            Route("/", index), Route("/state", state), Route("/control", control, methods=["POST"]),
            WebSocketRoute("/ws", ws), Route("/sessions/{index:int}.{kind}", session_file),
        ])

    def _handle(self, body, source) -> dict:
        """One control or note from a browser or a script (loop thread): the reply."""
        try:
            if not isinstance(body, dict):
                self.face.refuse()
                raise ControlError('send a JSON object: {"type": "control", "name": ..., "value": ...}')
            if body.get("type") == "note":
                self.face.note(body.get("note"), body.get("velocity", 90), source)
                return {"type": "ok"}
            if body.get("type", "control") != "control" or not isinstance(body.get("name"), str):
                self.face.refuse()
                raise ControlError('a control is {"type": "control", "name": NAME, "value": VALUE}')
            value = self.face.control(body["name"], body.get("value"), source)
            return {"type": "ok", "name": body["name"], "value": value}
        except ControlError as e:
            return {"type": "error", "error": str(e)}

    async def _made_file(self, found, kind: str) -> Path | None:
        """The session's picture (the one ``play --plot`` drew, else one drawn now) or WAV, made in a process of
        its own (never in this one, whose Python the model needs), one at a time."""
        beside = found.path.with_suffix("." + kind)
        if beside.exists() and beside.stat().st_mtime >= found.path.stat().st_mtime:
            return beside
        target = self._made / f"{found.index}.{kind}"
        async with self._making:
            if not target.exists():
                command = "plot" if kind == "png" else "render"
                proc = await asyncio.create_subprocess_exec(
                    "nice", "-n", "10", sys.executable, "-m", "improviser", command, str(found.path), str(target),
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                try:
                    await asyncio.wait_for(proc.wait(), MADE_SECONDS)
                except asyncio.TimeoutError:
                    proc.kill()
                    await proc.wait()
        return target if target.exists() else None

    # ---- who may ask -----------------------------------------------------------------------------------

    def refusal(self, host: str | None, origin: str | None, token: str | None) -> str | None:
        """Why a request is refused (None: it is not)."""
        if not self.any_host and host not in self.hosts:
            return f"this server answers to {', '.join(sorted(self.hosts))}, not {host!r}"
        if origin is not None and origin != f"http://{host}":
            return f"a page from {origin} may not use this instrument"
        if self.token and not hmac.compare_digest((token or "").encode(), self.token.encode()):
            return "a token is needed: open the address the improviser printed at start (it ends in ?token=...)"
        return None


class _Guard:
    """ASGI middleware: ``WebFace.refusal`` for every request and WebSocket, before the app sees it."""

    def __init__(self, app, web: WebFace):
        self.app, self.web = app, web

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        token = (parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token") or [None])[0]
        if token is None and "cookie" in headers:
            with contextlib.suppress(Exception):
                morsel = SimpleCookie(headers["cookie"]).get(COOKIE)
                token = morsel.value if morsel is not None else None
        if token is None and headers.get("authorization", "").startswith("Bearer "):
            token = headers["authorization"][7:]
        problem = self.web.refusal(headers.get("host"), headers.get("origin"), token)
        if problem is None:
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            await receive()  # the connect
            await send({"type": "websocket.close", "code": 1008, "reason": problem[:120]})
            return
        body = (problem + "\n").encode()
        await send({"type": "http.response.start", "status": 403,
                    "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
