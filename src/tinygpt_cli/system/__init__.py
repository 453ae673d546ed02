"""Process plumbing: files, devices, threads, processes, random generators."""
