"""One process of the two-process checkpoint test (``test_checkpoint_multiprocess.py``).

Run as ``python multiprocess_worker.py PROCESS_ID PORT CKPT_DIR``; each process has two
simulated CPU devices, so the global mesh has four, two per process.
"""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"

import jax  # noqa: E402

jax.config.update("jax_cpu_collectives_implementation", "gloo")


def main() -> None:
    process_id, port, ckpt_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    from flaxen.training import checkpoints

    mesh = Mesh(np.array(jax.devices()), ("batch",))
    split, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
    values = np.arange(8.0, dtype=np.float32).reshape(8, 1)

    def sharded(v):
        return jax.make_array_from_callback(v.shape, split, lambda idx: v[idx])

    tree = {"x": sharded(values), "r": jax.device_put(np.ones(3, np.float32), replicated)}
    checkpoints.save_checkpoint(ckpt_dir, tree, 1)
    # No extra barrier: save_checkpoint returns on every process once the file exists.
    files = sorted(os.listdir(ckpt_dir))
    target = {"x": sharded(np.zeros_like(values)),
              "r": jax.device_put(np.zeros(3, np.float32), replicated)}
    back = checkpoints.restore_checkpoint(ckpt_dir, target)
    ok = (back["x"].sharding == split and back["r"].sharding == replicated
          and all(np.array_equal(s.data, values[s.index]) for s in back["x"].addressable_shards)
          and np.array_equal(back["r"].addressable_data(0), np.ones(3)))
    print(f"RESULT process={process_id} files={files} ok={ok}", flush=True)


if __name__ == "__main__":
    main()
