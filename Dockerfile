# One image for the API, the migrations job and the workers.
# GPU workers: build with --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
FROM python:3.11-slim

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    SHARPMIX_HOME=/var/lib/sharpmix HF_HOME=/var/lib/sharpmix/hf

RUN useradd --create-home --uid 1000 sharpmix && mkdir -p /var/lib/sharpmix /data \
    && chown sharpmix /var/lib/sharpmix
WORKDIR /app

COPY pyproject.toml constraints.txt README.md ./
RUN pip install --no-cache-dir --index-url "$TORCH_INDEX_URL" torch==2.13.0
COPY contract ./contract
COPY service ./service
COPY workers ./workers
COPY sharpmix ./sharpmix
COPY migrations ./migrations
RUN pip install --no-cache-dir -c constraints.txt .

USER sharpmix
EXPOSE 8000
CMD ["sharpmix", "serve", "--host", "0.0.0.0", "--port", "8000"]
