# One image for the bot, the pairing service and the sandbox; the compose file
# picks the command.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bot bot
COPY handlers handlers
COPY pairing_service pairing_service
COPY journey journey
COPY sandbox sandbox
COPY locales locales
COPY municipality_kit municipality_kit
# Compiled catalogs spare every process the in-memory compilation at start.
RUN pip install --no-cache-dir "Babel>=2.14,<3" && python -m bot.i18n compile
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER app
WORKDIR /home/app
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
# 8080: the pairing service; 8443: the bot's webhook server; 9091: the bot's
# probes and metrics.
EXPOSE 8080 8443 9091
CMD ["gv-pairing-service"]
