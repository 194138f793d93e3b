from mrcnn_batch.cli import main

main()
