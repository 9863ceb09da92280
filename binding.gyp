{
  "targets": [
    {
      "target_name": "extfs_native",
      "sources": ["native/extfs_native.c"],
      "cflags": ["-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE"]
    }
  ]
}
