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
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER app
WORKDIR /home/app
ENV PYTHONUNBUFFERED=1
EXPOSE 8080
CMD ["gv-pairing-service"]
