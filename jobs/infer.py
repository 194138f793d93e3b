"""Entry point of ``infer`` for ``ray job submit`` (and KubeRay's RayJob).

Ray Jobs runs this script on the head node with ``RAY_ADDRESS`` set, so ``infer`` joins the
cluster instead of starting a local Ray; the arguments are those of ``mrcnn-batch infer``::

    ray job submit --address http://HEAD:8265 --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/infer.py s3://bucket/images/ s3://bucket/runs/r1 --model maskrcnn_resnet50_fpn

The exit code is the CLI's (0 done, 3 refused, 4 shards failed...), so the job's status says
whether the run completed; the same submission again resumes it.
"""

from __future__ import annotations

import sys

from mrcnn_batch.cli import app

if __name__ == "__main__":
    app(args=["infer", *sys.argv[1:]], prog_name="mrcnn-batch")
