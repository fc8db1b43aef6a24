"""``python -m gateway.tenancy.hashkey``: the SHA-256 digest to store for an API key.

::

    python -m gateway.tenancy.hashkey sk-my-key   # prints the digest
    python -m gateway.tenancy.hashkey -           # key from stdin (out of shell history)
    python -m gateway.tenancy.hashkey --new       # a new random key, then its digest

The digest goes in a keys file (``key_sha256``) or in Redis
(``HSET llmgw:api_keys <digest> <tenant>``); the key goes to the client only.
"""

from __future__ import annotations

import argparse
import secrets
import sys

from gateway.tenancy.keys import hash_key

NEW_KEY_PREFIX = "sk-llmgw-"


def new_key() -> str:
    """A fresh key with 256 bits of randomness."""
    return NEW_KEY_PREFIX + secrets.token_urlsafe(32)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.tenancy.hashkey",
        description="Print the SHA-256 digest under which the gateway stores an API key.",
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("key", nargs="?", help="the API key, or '-' to read it from stdin")
    group.add_argument("--new", action="store_true", help="make a new random key")
    args = parser.parse_args(argv)
    if args.new:
        key = new_key()
        print(key)
    elif args.key == "-":
        key = sys.stdin.readline().strip()
    else:
        key = args.key.strip()
    if not key:
        parser.error("the key is empty")
    print(hash_key(key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
