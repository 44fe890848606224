# Build stage: a wheel from the sources. pipeline/contract/schemas is a link to ../../schemas, so pipeline/
# and schemas/ are copied to the same relative places for the link to resolve; the wheel carries copies.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# Final image: the wheel installed like any user installs it (no source tree, no editable install), so the
# image runs exactly what a `pip install` of the release would.
FROM python:3.11-slim
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels \
    && useradd --system --uid 10001 --create-home pipeline
WORKDIR /home/pipeline
# numeric, so a runtime that enforces runAsNonRoot can verify it
USER 10001
ENTRYPOINT ["wigzo-pipeline"]
CMD ["run"]
