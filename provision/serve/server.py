"""A small OpenAI-compatible server for the transformers stack, run by the TARGET environment's
own Python (like the smoke's runner, it imports nothing of provision):

    <env>/bin/python server.py --model PATH --served-model-name ORG/NAME --port N [--host H]
        [--max-model-len N] [--device auto|cpu|cuda] [--model-class NAME] [--trust-remote-code]

Routes: GET /health (200 once the model is loaded, 503 while loading), GET /v1/models,
POST /v1/chat/completions (text and `image_url` parts whose url is a data: URI; no streaming).
The port is bound before the model loads, so a port in use fails at once. The model is loaded by
the smoke runner's transformers backend (provision/smoke/runner.py, loaded by path), so serving
and the smoke load a checkpoint the same way.
"""

from __future__ import annotations

import argparse
import base64
import importlib.util
import io
import json
import os
import sys
import threading
import time
import traceback
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

MAX_BODY = 64 * 1024 * 1024  # a request with a few large images; more is refused
DEFAULT_MAX_TOKENS = 64


def _runner():
    path = os.path.join(os.path.dirname(_HERE), "smoke", "runner.py")
    spec = importlib.util.spec_from_file_location("provision_smoke_runner", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BadRequest(Exception):
    pass


class Model:
    """The loaded model; one generation at a time (a CPU or one GPU serves one request)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.ready = threading.Event()
        self.error: str | None = None
        self.lock = threading.Lock()
        self.backend = None

    def load(self) -> None:
        try:
            runner = _runner()
            device, _ = runner.resolve_device(self.args.device)
            request = {
                "path": self.args.model,
                "repo_id": self.args.served_model_name,
                "model_class": self.args.model_class,
                "trust_remote_code": self.args.trust_remote_code,
            }
            backend = runner.TransformersBackend(request, device, runner.Memory(device))
            report: dict = {}
            start = time.perf_counter()
            backend.load(report)
            self.backend = backend
            self.runner = runner
            print(
                f"loaded {report.get('model_class')} ({report.get('dtype')}) on {device} in "
                f"{time.perf_counter() - start:.1f} s",
                flush=True,
            )
            self.ready.set()
        except Exception:  # noqa: BLE001 - the log says why; the process ends
            traceback.print_exc()
            sys.stdout.flush()
            os._exit(3)

    def chat(self, body: dict) -> dict:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("'messages' must be a non-empty list")
        converted, images = [], []
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("role"), str):
                raise BadRequest("each message needs a 'role' and 'content'")
            converted.append({"role": message["role"], "content": _parts(message, images)})
        max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
        max_tokens = DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise BadRequest("'max_tokens' must be a positive integer")
        backend = self.backend
        templater = backend.processor
        if not getattr(templater, "chat_template", None):
            templater = getattr(backend.processor, "tokenizer", None) or templater
        text = templater.apply_chat_template(converted, add_generation_prompt=True, tokenize=False)
        batch = backend.processor(text=[text], images=images or None, return_tensors="pt")
        inputs = {}
        for key, value in batch.items():
            if hasattr(value, "to"):
                value = value.to(backend.device)
                if value.is_floating_point():
                    value = value.to(backend.model.dtype)
            inputs[key] = value
        prompt_tokens = int(inputs["input_ids"].shape[1])
        limit = self.args.max_model_len
        if limit and prompt_tokens + max_tokens > limit:
            raise BadRequest(
                f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_tokens}) is more than "
                f"this server's max model length ({limit})"
            )
        with self.lock:
            out = backend.generate(inputs, "greedy", max_tokens)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.args.served_model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": out["answer"]},
                    "finish_reason": "length" if out["new_tokens"] >= max_tokens else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": out["new_tokens"],
                "total_tokens": prompt_tokens + out["new_tokens"],
            },
        }


def _parts(message: dict, images: list) -> list[dict]:
    """OpenAI content (a string or a list of text / image_url parts) as a chat template's."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise BadRequest("'content' must be a string or a list of parts")
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            images.append(_image(url))
            parts.append({"type": "image"})
        else:
            raise BadRequest(f"unsupported content part {kind!r} (text and image_url are)")
    return parts


def _image(url: object):
    if not isinstance(url, str) or not url.startswith("data:") or "," not in url:
        raise BadRequest(
            "image_url must be a data: URI (data:image/png;base64,...); this server is offline"
        )
    head, payload = url.split(",", 1)
    try:
        raw = base64.b64decode(payload, validate=True) if head.endswith(";base64") else None
    except ValueError as exc:
        raise BadRequest(f"image_url: bad base64 ({exc})") from exc
    if raw is None:
        raise BadRequest("image_url: only base64 data: URIs are read")
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            return img.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - PIL raises several kinds
        raise BadRequest(f"image_url: not an image PIL can read ({exc})") from exc


def make_handler(model: Model) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: object) -> None:
            print(f"{self.address_string()} {fmt % args}", flush=True)

        def _send(self, code: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, code: int, message: str) -> None:
            self._send(code, {"error": {"message": message, "type": "invalid_request_error"}})

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path == "/health":
                if model.ready.is_set():
                    self._send(200, {"status": "ok"})
                else:
                    self._send(503, {"status": "loading"})
            elif path == "/v1/models":
                name = model.args.served_model_name
                self._send(
                    200,
                    {
                        "object": "list",
                        "data": [{"id": name, "object": "model", "owned_by": "provision"}],
                    },
                )
            else:
                self._error(404, f"no route {path}")

        def do_POST(self) -> None:  # noqa: N802
            path = self.path.split("?", 1)[0]
            if path != "/v1/chat/completions":
                self._error(404, f"no route {path}")
                return
            if not model.ready.is_set():
                self._error(503, "the model is still loading")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if length < 0 or length > MAX_BODY:
                self._error(413 if length > MAX_BODY else 400, "bad Content-Length")
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
                if not isinstance(body, dict):
                    raise BadRequest("the body must be a JSON object")
                if body.get("stream"):
                    raise BadRequest("stream=true is not supported by this server")
                self._send(200, model.chat(body))
            except (BadRequest, ValueError) as exc:
                self._error(400, str(exc))
            except Exception as exc:  # noqa: BLE001 - the model's own error, to the client
                traceback.print_exc()
                self._error(500, f"{type(exc).__name__}: {exc}")

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-model-len", type=int, default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-class", default=None)
    parser.add_argument("--trust-remote-code", action="store_true")
    args = parser.parse_args(argv)
    model = Model(args)
    try:
        server = ThreadingHTTPServer((args.host, args.port), make_handler(model))
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", flush=True)
        return 4
    server.daemon_threads = True
    print(f"listening on http://{args.host}:{args.port}, loading {args.model}", flush=True)
    threading.Thread(target=model.load, daemon=True).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
