"""The GPU check: raysight's CUDA path proven in one command, with no network.

``python -m bench.gpu_check`` builds random models of real architectures at realistic sizes
on the GPU (a CLIP ViT-L/14, a Qwen2-VL-2B, a TinyLLaVA: CLIP ViT-L/14-336 under a
TinyLlama-1.1B), loads them through raysight's normal path (``ModelSpec(model=folder,
dtype=..., device="cuda")``) in bfloat16 and float16, and checks:

- batched == single: each chat's greedy tokens in a batch equal its tokens alone, or where
  low precision flips a near tie, the first differing step is a near tie of the logits
  (bench/gpu_check/equality.py gives the rule; the flip rate is reported); CLIP vectors in
  a batch have cosine >= 0.999 with the same input's vector alone;
- the vision-feature cache keeps its features on the GPU and gives the same tokens;

then measures the engine's ceiling and ``raysight serve`` at 1/8/32/64 clients for
embeddings and generation (decoding the clients' JPEGs on the CPU as always) with the GPU's
busy %, and the offline embed job over 2,000 images against a plain loop. It writes one JSON
(``--out``, default bench/results/gpu_check.json), prints a table, and exits 1 when a check
fails. Made for one GPU in <= 8 minutes; every step's time is printed and kept in the JSON.

``python -m bench.gpu_check --device cpu --tiny`` runs the same steps on tiny models on the
CPU; CI runs it that way (tests/integration/test_gpu_check_smoke.py).

On a GPU machine without network (torch with CUDA installed, Python 3.12), the packages it
lacks travel as wheels packed by ``python -m bench.gpu_check.bundle``; the README's
Benchmarks section (*The GPU check*) gives the exact commands from a fresh checkout.
"""
