"""
Every error modelrunner raises on purpose; nothing here knows HTTP or the CLI.

* ModelRunnerError            (500 internal_error)
  x InvalidRequest            (400 invalid_request) bad JSON, bad reference, bad option
    + InvalidReference        (400) a model reference that cannot be parsed
  x ConfigError               (config_error) a bad config file, env var or flag
  x InvalidConfig             (422 config_error) a reload refused the config file
  x ModelNotFound             (404 model_not_found) not in the store / unknown tag
  x NotFound                  (404 not_found) anything else that does not exist
  x Conflict                  (409 conflict) tag exists, model in use
  x PayloadTooLarge           (413 payload_too_large)
  x TooManyRequests           (429 rate_limited) a model's in-flight limit is reached
  x Unavailable               (503 unavailable) nothing can serve it right now
    + RunnerFailed            llama-server died or never became healthy
    + UpstreamError           llama-server closed or garbled the stream
    + BinaryNotFound          no usable llama-server binary anywhere we looked
      + EngineUnusable        the explicitly configured llama-server fails the probe here
      + BackendNotInstalled   an engine's packages (MLX: mlx, mlx-lm) are not installed
  x UpstreamTimeout           (504 upstream_timeout) the runner sent nothing for
                              server.upstream_read_timeout_s (slow, not overloaded)
  x EngineBuildError          (500 engine_build_failed) the native build of llama-server failed
  x StoreError                (500 store_error) the on-disk store refused an operation
    + InsufficientStorage     (507) not enough free space for a pull
    + DigestMismatch          (502) bytes did not hash to their digest
  x RegistryError             (502 registry_error) the OCI registry refused or failed
    + RegistryAuthError       (401) credentials missing or refused
"""

from __future__ import annotations

from typing import ClassVar


class ModelRunnerError(Exception):
    """Base class: carries what the HTTP layer and the CLI need to report it."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ModelRunnerError):
    status = 400
    code = "invalid_request"


class InvalidReference(InvalidRequest):
    code = "invalid_reference"


class ConfigError(ModelRunnerError):
    status = 500
    code = "config_error"


class InvalidConfig(ModelRunnerError):
    """A config file that a reload refused (the running config stays): the file is at fault."""

    status = 422
    code = "config_error"


class ModelNotFound(ModelRunnerError):
    status = 404
    code = "model_not_found"

    def __init__(self, reference: str, message: str | None = None) -> None:
        super().__init__(
            message
            or (
                f"model {reference!r} is not in the local store; "
                f"run `modelrunner pull {reference}` first"
            )
        )
        self.reference = reference


class NotFound(ModelRunnerError):
    status = 404
    code = "not_found"


class Conflict(ModelRunnerError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ModelRunnerError):
    status = 413
    code = "payload_too_large"


class TooManyRequests(ModelRunnerError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Unavailable(ModelRunnerError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # a Retry-After header when known


class RunnerFailed(Unavailable):
    code = "runner_failed"

    def __init__(self, message: str, log_tail: str = "") -> None:
        full = (
            f"{message}\n--- last lines of the runner's log ---\n{log_tail}"
            if log_tail
            else message
        )
        super().__init__(full)
        self.log_tail = log_tail


class UpstreamError(Unavailable):
    code = "upstream_error"


class UpstreamTimeout(ModelRunnerError):
    """A runner that sent nothing within the read timeout: the answer is late, not refused, so
    a 504 (a client retrying a 503 "overloaded" would only queue the same wait again)."""

    status = 504
    code = "upstream_timeout"

    def __init__(self, model: str, timeout_s: float) -> None:
        super().__init__(
            f"the runner for model {model!r} sent nothing for {timeout_s:g}s "
            "(server.upstream_read_timeout_s), so the request was stopped; stream the answer "
            "(the timeout then applies between tokens) or raise server.upstream_read_timeout_s"
        )
        self.model = model
        self.timeout_s = timeout_s


class BinaryNotFound(Unavailable):
    code = "llama_server_not_found"


class EngineUnusable(BinaryNotFound):
    code = "llama_server_unusable"


class BackendNotInstalled(BinaryNotFound):
    """The engine's packages are not in the Python that would run it; the message says how."""

    code = "backend_not_installed"


class EngineBuildError(ModelRunnerError):
    status = 500
    code = "engine_build_failed"


class StoreError(ModelRunnerError):
    status = 500
    code = "store_error"


class InsufficientStorage(StoreError):
    status = 507
    code = "insufficient_storage"


class DigestMismatch(StoreError):
    status = 502
    code = "digest_mismatch"


class RegistryError(ModelRunnerError):
    status = 502
    code = "registry_error"

    def __init__(self, message: str, registry_code: str = "") -> None:
        super().__init__(message)
        self.registry_code = registry_code  # the registry's own, e.g. DIGEST_INVALID


class RegistryAuthError(RegistryError):
    status = 401
    code = "registry_unauthorized"
