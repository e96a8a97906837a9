import torch, time
torch.set_num_threads(1)
exec(open('/tmp/explore.py').read().split("for loss in")[0])
w, L = setup("muP", "xent", 3)
op=C.hessian_matvec(L,w)
v=[torch.randn_like(t) for t in w]
t0=time.time()
for _ in range(100): op(v)
print("hvp ms", (time.time()-t0)*10)
t0=time.time()
for _ in range(100): op2=C.hessian_matvec(L,w)
print("build ms", (time.time()-t0)*10)
import cProfile, pstats
cProfile.run("for _ in range(50): op(v)", "/tmp/prof")
pstats.Stats("/tmp/prof").sort_stats("cumtime").print_stats(12)
