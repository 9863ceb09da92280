{
  "targets": [
    {
      "target_name": "extfs_native",
      "sources": ["native/extfs_native.c", "native/btrfs.c", "native/csum.c", "native/export/ext4.c", "native/export/ext4_napi.c", "native/manifest/v2write.c"],
      "cflags": ["-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE", "<!@(pkg-config --cflags ext2fs)"],
      "libraries": ["<!@(pkg-config --libs ext2fs)"]
    },
    {
      "target_name": "extfs_view",
      "sources": ["native/view/engine.c", "native/view/check.c", "native/view/ops.c", "native/view/plan.c", "native/view/read.c", "native/view/config.c", "native/view/delta.c", "native/view/push.c", "native/view/decode.c", "native/view/load2.c", "native/view/tables_file.c", "native/csum.c"],
      "cflags": ["-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE", "<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)", "-lz", "-lzstd", "-llzo2"]
    }
  ]
}
