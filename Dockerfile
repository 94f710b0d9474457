# nemo-rpo on an NVIDIA PyTorch image, which ships CUDA, torch, Transformer Engine and apex.
# Build: docker build -t nemo-rpo .   Run: docker run --gpus all --ipc=host -it nemo-rpo nemo-rpo-train
FROM nvcr.io/nvidia/pytorch:25.04-py3

WORKDIR /workspace/nemo-rpo
COPY . .

# Install the dependencies without letting pip replace the image's torch build, then this package
# without dependency resolution (editable, so conf/ is found beside the package).
RUN pip install --no-cache-dir "megatron-core==0.16.1" "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" \
        psutil tqdm tensorboard "hydra-submitit-launcher" \
 && pip install --no-cache-dir --no-deps -e .

ENV OMP_NUM_THREADS=8
CMD ["nemo-rpo-train", "--help"]
