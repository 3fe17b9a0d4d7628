"""Batch auto-labelling (``tinysam-edge label``): image lists in, JSON Lines shards and one COCO instances file out.

``inputs`` reads IMAGES and ``--boxes``; ``annotate`` turns an image into its shard line; ``shards``
writes, validates and merges shards; ``job`` runs or resumes a job; ``local`` and ``ray_engine`` are
the engines (``ray_engine`` imports ray, through the shared ``tinysam_edge.ray_utils``).
"""
