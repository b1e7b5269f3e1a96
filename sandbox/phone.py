"""Play the Ockto app on the phone from a terminal, against a running sandbox.

``python -m sandbox.phone SERVICE_URL LINK_OR_CODE [--partner] [--fail-source S]``
claims the link that the bot sent (the QR code's text or the "open the app"
button) or the typed code from the QR message (``XXXX-XXXX``), logs in,
fetches every source, lets the partner do the same, reports the review and
uploads a synthetic package. The client then answers the
consent question in the chat page.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from journey.sources import SOURCES
from sandbox.app_simulator import AppApiError, OcktoAppSimulator, synthetic_package


async def _play(
    service_url: str, link: str, *, partner: bool, failed: str | None
) -> int:
    async with OcktoAppSimulator(service_url) as app:
        try:
            if "://" in link:
                claim = await app.claim(link)
            else:
                claim = await app.claim_typed(link)
            print(f"Paired. Confirmation code in the app: {claim.confirmation_code}")
            persons = ["client", "partner"] if partner else ["client"]
            for person in persons:
                await app.digid_login(person)
                print(f"{person}: logged in with DigiD")
                for source in SOURCES:
                    if source == failed:
                        await app.fail_source(source, person)
                        print(f"{person}: {source} failed")
                        continue
                    await app.fetch_source(source, person)
                    print(f"{person}: fetched {source}")
            if partner:
                await app.partner_done()
            await app.review_ready()
            upload = await app.upload_package(synthetic_package("sandbox-phone"))
            print(f"Uploaded a synthetic package of {upload.size} bytes.")
            print("Answer the consent question in the chat page.")
        except AppApiError as error:
            print(f"The pairing service rejected the request: {error}")
            return 1
        except ValueError as error:
            print(f"That is not an app link or a typed code: {error}")
            return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and play the app; return the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m sandbox.phone", description=__doc__
    )
    parser.add_argument(
        "service_url", help="the pairing service, e.g. http://127.0.0.1:8080"
    )
    parser.add_argument(
        "link", help="the app link from the QR message, or its typed code XXXX-XXXX"
    )
    parser.add_argument("--partner", action="store_true", help="the partner joins too")
    parser.add_argument(
        "--fail-source", choices=SOURCES, default=None, help="let this source fail"
    )
    arguments = parser.parse_args(argv)
    return asyncio.run(
        _play(
            arguments.service_url,
            arguments.link,
            partner=arguments.partner,
            failed=arguments.fail_source,
        )
    )


if __name__ == "__main__":
    sys.exit(main())
