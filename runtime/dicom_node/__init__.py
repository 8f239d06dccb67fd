"""The DICOM node (``lungedge dicom-node``, extra ``dicom-node``): C-STORE in, SR + SEG + SC out, forwarded.

    config    NodeConfig / Destination (frozen dataclasses; JSON file or CLI flags)
    scp       the storage SCP (pynetdicom): C-ECHO, C-STORE of CR, DX, CT; allowed callers; TLS
    store     the state folder: durable inbox, SQLite work queue and outbox, failed/ and dead-letter/
    process   X-ray instances and CT series through the runtime's pipelines
    writers   TID 1500 Comprehensive 3D SR, SEG and overlay SC (highdicom), UIDs derived from the inputs
    forward   the C-STORE SCU: back-off while a destination is unreachable, dead-letter after N refusals
    node      the threads that tie them together; cli the command
"""
