"""Verifies webhook requests with the official Standard Webhooks library
(`standardwebhooks` from PyPI), as a receiver would: `Webhook(secret).verify(body, headers)`.

Reads JSON from stdin:
  {"secrets": {"<name>": "whsec_..."},
   "requests": [{"body": "<base64>", "headers": {"webhook-id": ..., ...}}]}
and prints one JSON line: for each request,
  {"verifies": {"<name>": true|false},
   "parts": [["<name>", ...], ...]}
where `verifies` is the library's answer on the whole request and `parts`
names, for each space-separated signature of `webhook-signature` in order,
the secrets whose verification of that signature alone succeeds.
"""
import base64
import json
import sys

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def verifies(secret, body, headers):
    try:
        Webhook(secret).verify(body, headers)
        return True
    except WebhookVerificationError:
        return False


def main():
    given = json.load(sys.stdin)
    secrets = given["secrets"]
    out = []
    for request in given["requests"]:
        body = base64.b64decode(request["body"])
        headers = request["headers"]
        parts = headers["webhook-signature"].split(" ")
        out.append({
            "verifies": {name: verifies(s, body, headers) for name, s in secrets.items()},
            "parts": [
                [name for name, s in secrets.items()
                 if verifies(s, body, dict(headers, **{"webhook-signature": part}))]
                for part in parts
            ],
        })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
