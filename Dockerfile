# The serving image of a lockstep endpoint (SageMaker inference container contract).
# SageMaker runs `<image> serve`, unpacks the model's ModelDataUrl into /opt/ml/model and expects
# GET /ping and POST /invocations on port 8080 (or SAGEMAKER_BIND_TO_PORT): lockstep.serve does both.
# Build and push: docker build -t <account>.dkr.ecr.<region>.amazonaws.com/lockstep:<tag> . && docker push …
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy

WORKDIR /opt/lockstep

# The same uv as the Makefile, and the locked dependency set (uv.lock), not a fresh resolution.
# It holds what the built-in model families need (lockstep.models): numpy (hashgram), onnx +
# onnxruntime + tokenizers (sentence-transformers, no torch), requests + tenacity (endpoint). The
# weights are not in the image: SageMaker unpacks the version's model.tar.gz into /opt/ml/model.
# LOCKSTEP_ENCODE_THREADS sets onnxruntime's threads (default: min(2, CPUs)).
RUN pip install uv==0.13.8
COPY pyproject.toml uv.lock README.md ./
COPY scripts/ scripts/
COPY components/ components/
RUN uv sync --frozen --no-dev --no-editable

RUN useradd --system --uid 10001 --no-create-home lockstep
USER lockstep
ENV PATH=/opt/lockstep/.venv/bin:$PATH

EXPOSE 8080
ENTRYPOINT ["python", "-m", "lockstep.serve"]
