"""The `falgate` command: `serve`, `emulator`, `keys new`, `models sync|list`, `push vapid-keys`."""

from __future__ import annotations

import argparse
import logging
import sys

import uvicorn


def _serve(args: argparse.Namespace) -> None:
    from app.main import create_app, load_settings
    from app.ops.logs import configure_process

    settings = load_settings()
    if args.host:
        settings.host = args.host
    if args.port:
        settings.port = args.port
    configure_process(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        proxy_headers=True,
        forwarded_allow_ips=settings.trusted_proxies_csv,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )


def _emulator(args: argparse.Namespace) -> None:
    from app.emulator import serve

    serve(port=args.port, host=args.host or "127.0.0.1")


def _keys_new(args: argparse.Namespace) -> None:
    from app.callers.keys import new_api_key

    try:
        key, entry = new_api_key(args.caller_id)
    except ValueError as exc:
        raise SystemExit(f"falgate keys new: {exc}") from None
    # The two values on stdout (scriptable); the advice on stderr. The key is not stored anywhere.
    print(f"key: {key}")
    print(f"entry: {entry}")
    print(
        f"Give the key to {args.caller_id}; it is shown only this once. Add the entry to FALGATE_API_KEYS,\n"
        f"comma-separated from any others, e.g. FALGATE_API_KEYS={entry}",
        file=sys.stderr,
    )


def _models_sync(args: argparse.Namespace) -> None:
    from pathlib import Path

    from app.catalog import model_api, registry
    from app.main import load_settings, model_sources

    settings = load_settings()
    folder = Path(args.dir or settings.model_schema_dir or settings.models_cache_path)
    try:
        written = registry.sync(model_sources(settings), folder)
    except (registry.ModelLoadError, model_api.ModelApiError, ValueError) as exc:
        raise SystemExit(f"falgate models sync: {exc}") from None
    for endpoint_id in written:
        print(f"{endpoint_id}\t{folder}")


def _models_list(args: argparse.Namespace) -> None:
    from app.catalog import registry
    from app.main import load_models, load_settings

    load_models(load_settings())
    for spec in registry.MODELS.values():
        print(f"{spec.model_id}\t{spec.source}\t{spec.category}")


def _push_vapid_keys(args: argparse.Namespace) -> None:
    from app.relay.push.vapid import new_key_pem

    pem, public_key = new_key_pem()
    # The private key on stdout (redirect it to a file), the advice on stderr.
    print(pem, end="")
    print(
        f"Public key (what /v1/push/vapid-public-key will answer): {public_key}\n"
        "Keep the PEM secret: set FALGATE_VAPID_PRIVATE_KEY to it (or to the file's path) and\n"
        "FALGATE_VAPID_SUBJECT to a mailto: or https: contact. A new key invalidates every subscription.",
        file=sys.stderr,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="falgate", description="A gateway for fal.ai's image-to-video models.")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway (FALGATE_* settings from the environment or .env)")
    serve.add_argument("--host", help="overrides FALGATE_HOST")
    serve.add_argument("--port", type=int, help="overrides FALGATE_PORT")
    serve.set_defaults(run=_serve)

    emulator = commands.add_parser("emulator", help="run the built-in fal emulator on its own")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=9000)
    emulator.set_defaults(run=_emulator)

    keys = commands.add_parser("keys", help="manage callers' API keys (FALGATE_AUTH=api_key)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True)
    keys_new = keys_commands.add_parser("new", help="print a new random key and its FALGATE_API_KEYS entry")
    keys_new.add_argument("caller_id", metavar="CALLER_ID", help="who the key is for, e.g. alice or web-app")
    keys_new.set_defaults(run=_keys_new)

    models = commands.add_parser("models", help="the fal endpoints FALGATE_MODELS configures")
    models_commands = models.add_subparsers(dest="models_command", required=True)
    sync = models_commands.add_parser("sync", help="fetch their OpenAPI documents from fal's model API into a folder")
    sync.add_argument("--dir", help="where to write (default FALGATE_MODEL_SCHEMA_DIR, else the cache folder)")
    sync.set_defaults(run=_models_sync)
    listing = models_commands.add_parser("list", help="print each served model, where its schema came from, its category")
    listing.set_defaults(run=_models_list)
    push = commands.add_parser("push", help="push-notification setup")
    push_commands = push.add_subparsers(dest="push_command", required=True)
    vapid_keys = push_commands.add_parser("vapid-keys", help="print a new VAPID private key (PEM) for Web Push")
    vapid_keys.set_defaults(run=_push_vapid_keys)

    args = parser.parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    logging.captureWarnings(True)
    main()
