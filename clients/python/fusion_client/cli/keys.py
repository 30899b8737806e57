"""``fusion keys create|list|revoke`` (admin key) and ``fusion usage``: docs/tenants.md."""

from __future__ import annotations

import csv

from fusion_client.cli.output import write_json
from fusion_client.client import FusionClient

USAGE_COLUMNS = ("key_id", "key_name", "model", "pipeline", "day", "requests", "items",
                 "prompt_tokens", "completion_tokens", "compute_s", "cache_hits", "errors",
                 "rejected")


def _globs(value: str) -> list[str]:
    return [g.strip() for g in value.split(",") if g.strip()]


def add_parsers(add, common) -> None:
    """The ``keys`` and ``usage`` sub-commands (``add`` makes one with the common options,
    ``common(parser)`` adds them to the actions of ``keys``)."""
    keys = add("keys", "issue, list and revoke API keys (admin key)")
    sub = keys.add_subparsers(dest="keys_command", metavar="ACTION")
    sub.required = True
    create = sub.add_parser("create", help="issue a key; its secret is printed once")
    create.add_argument("name")
    create.add_argument("--owner", help="team or owner")
    create.add_argument("--admin", action="store_true", help="also the admin routes")
    for name in ("models", "tasks", "pipelines"):
        create.add_argument(f"--{name}", type=_globs, metavar="GLOB,...",
                            help=f"{name} the key may use (default all)")
    for name, help_ in (("rpm", "requests per minute"), ("tpm", "LLM tokens per minute"),
                        ("max-concurrency", "requests at once"),
                        ("quota-requests", "requests per quota period"),
                        ("quota-tokens", "tokens per quota period")):
        create.add_argument(f"--{name}", type=int, help=help_)
    create.add_argument("--quota-period", choices=("day", "month"))
    create.add_argument("--expires-at", help="ISO 8601 (e.g. 2027-01-01T00:00:00Z)")
    listing = sub.add_parser("list", help="every issued key (no secrets)")
    listing.add_argument("--owner")
    revoke = sub.add_parser("revoke", help="revoke a key on every router replica")
    revoke.add_argument("id")
    for p in (create, listing, revoke):
        common(p)
    usage = add("usage", "usage per key, model or pipeline and day (own rows; all for admin)")
    usage.add_argument("--key-id")
    usage.add_argument("--from", dest="day_from", metavar="YYYY-MM-DD")
    usage.add_argument("--to", dest="day_to", metavar="YYYY-MM-DD")
    usage.add_argument("--model")
    usage.add_argument("--pipeline")
    usage.add_argument("--csv", action="store_true", help="CSV for a spreadsheet")


def _table(out, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  + "\n")


def cmd_keys(client: FusionClient, args, out, err) -> None:
    if args.keys_command == "create":
        fields = {k: getattr(args, k) for k in (
            "owner", "models", "tasks", "pipelines", "rpm", "tpm", "max_concurrency",
            "quota_requests", "quota_tokens", "quota_period", "expires_at")
            if getattr(args, k) is not None}
        if args.admin:
            fields["scopes"] = ["user", "admin"]
        key = client.create_key(args.name, **fields)
        if args.json:
            write_json(out, key)
            return
        out.write(f"id:  {key['id']}\nkey: {key['key']}\n")
        err.write("the key is shown this once: store it now\n")
        return
    if args.keys_command == "revoke":
        key = client.revoke_key(args.id)
        if args.json:
            write_json(out, key)
        else:
            out.write(f"revoked {key['id']} ({key['name']})\n")
        return
    keys = client.list_keys(args.owner)
    if args.json:
        write_json(out, keys)
        return

    def limits(k: dict) -> str:
        parts = [f"{n}={k[n]}" for n in ("rpm", "tpm", "max_concurrency", "quota_requests",
                                         "quota_tokens") if k.get(n)]
        return ",".join(parts) or "-"

    _table(out, ("ID", "NAME", "OWNER", "ACTIVE", "MODELS", "PIPELINES", "LIMITS"), [
        (k["id"], k["name"], k.get("owner") or "-", "yes" if k["active"] else "no",
         ",".join(k["models"]) if k.get("models") is not None else "*",
         ",".join(k["pipelines"]) if k.get("pipelines") is not None else "*", limits(k))
        for k in keys])


def cmd_usage(client: FusionClient, args, out, err) -> None:
    rows = client.usage(key_id=args.key_id, day_from=args.day_from, day_to=args.day_to,
                        model=args.model, pipeline=args.pipeline)
    if args.json:
        write_json(out, rows)
        return
    if args.csv:
        writer = csv.DictWriter(out, USAGE_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return
    _table(out, ("DAY", "KEY", "MODEL/PIPELINE", "REQUESTS", "ITEMS", "TOKENS", "COMPUTE_S",
                 "CACHE_HITS", "ERRORS", "REJECTED"), [
        (r["day"], r.get("key_name") or r["key_id"], r.get("model") or
         f"pipeline:{r.get('pipeline')}", str(r["requests"]), str(r["items"]),
         str(r["prompt_tokens"] + r["completion_tokens"]), f"{r['compute_s']:.3f}",
         str(r["cache_hits"]), str(r["errors"]), str(r["rejected"])) for r in rows])
