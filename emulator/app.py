"""The aiohttp application: routes of the emulated API and of the /_emulator/ test endpoints."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from gemini_gateway.emulator import batches, recorder, tuning
from gemini_gateway.emulator.auth import api_key_middleware
from gemini_gateway.emulator.batches import BATCHES_KEY, BatchStore
from gemini_gateway.emulator.catalog import get_model, list_models
from gemini_gateway.emulator.embeddings import batch_embed_contents, embed_content
from gemini_gateway.emulator.errors import ApiError, method_not_allowed, unknown_url
from gemini_gateway.emulator.generate import count_tokens, generate_content, stream_generate_content
from gemini_gateway.emulator.injection import fault_middleware
from gemini_gateway.emulator.labels import enforcing_labels
from gemini_gateway.emulator.recorder import RECORDER_KEY, Recorder, recording_middleware
from gemini_gateway.emulator.settings import SETTINGS_KEY, EmulatorSettings
from gemini_gateway.emulator.tuning import TUNING_KEY, TuningStore

log = logging.getLogger(__name__)

# The generate/count/models surface answers under both versions (google-genai with a custom
# base_url calls /v1); tuning and operations exist under v1beta only.
VERSION = "/{version:v1beta|v1}"
MODEL = VERSION + "/models/{model:[^/:]+}"
ANY_MODEL = VERSION + "/{collection:models|tunedModels}/{model:[^/:]+}"
# Vertex AI's publisher-model paths take the same JSON bodies; its generate calls also
# check labels, which the Gemini API takes unchecked.
VERTEX_MODEL = (
    "/{version:v1|v1beta1}/projects/{project:[^/]+}/locations/{location:[^/]+}"
    "/publishers/google/models/{model:[^/:]+}"
)

# Requests may carry inline media; Google accepts about 20 MB of it per request.
MAX_REQUEST_BYTES = 64 * 1024 * 1024


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Render ApiError, the router's 404 and 405, and any bug, as a Google error body."""
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except web.HTTPNotFound:
        return unknown_url(request.path).response()
    except web.HTTPMethodNotAllowed as exc:
        response = method_not_allowed(request.method, request.path).response()
        # HTTP requires a 405 to say which methods the resource does take.
        response.headers["Allow"] = ", ".join(sorted(exc.allowed_methods))
        return response
    except (web.HTTPException, ConnectionResetError):
        raise
    except Exception:
        log.exception("emulator handler failed on %s %s", request.method, request.path)
        return ApiError("INTERNAL", "Internal error encountered.").response()


def create_app(settings: EmulatorSettings | None = None) -> web.Application:
    """A fresh emulator with its own request log, stats, tuned models and batches."""
    settings = settings or EmulatorSettings()
    # Outermost first: count every exchange, then render errors (including auth and fault
    # errors), then check the key, then apply delays and header faults.
    app = web.Application(
        middlewares=[recording_middleware, error_middleware, api_key_middleware, fault_middleware],
        client_max_size=MAX_REQUEST_BYTES,
    )
    app[SETTINGS_KEY] = settings
    app[RECORDER_KEY] = Recorder(size=settings.request_log_size)
    app[TUNING_KEY] = TuningStore(settings.tuning_seconds, settings.seed)
    app[BATCHES_KEY] = BatchStore(settings.batch_seconds, settings.seed)

    app.router.add_get(VERSION + "/models", list_models)
    app.router.add_get(MODEL, get_model)
    app.router.add_post(ANY_MODEL + ":generateContent", generate_content)
    app.router.add_post(ANY_MODEL + ":streamGenerateContent", stream_generate_content)
    app.router.add_post(MODEL + ":countTokens", count_tokens)
    app.router.add_post(MODEL + ":embedContent", embed_content)
    app.router.add_post(MODEL + ":batchEmbedContents", batch_embed_contents)
    app.router.add_post(VERTEX_MODEL + ":generateContent", enforcing_labels(generate_content))
    app.router.add_post(
        VERTEX_MODEL + ":streamGenerateContent", enforcing_labels(stream_generate_content)
    )
    app.router.add_post(VERTEX_MODEL + ":countTokens", count_tokens)
    tuning.add_routes(app)
    batches.add_routes(app)
    recorder.add_routes(app)
    return app
