FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY schemas ./schemas
# editable: the decoder reads schemas/ beside the package, as in a checkout
RUN pip install --no-cache-dir -e . && useradd --system --uid 10001 pipeline
USER pipeline
ENTRYPOINT ["wigzo-pipeline"]
CMD ["run"]
