{
  "targets": [
    {
      "target_name": "extfs_native",
      "sources": ["native/extfs_native.c", "native/btrfs.c", "native/csum.c", "native/export/ext4.c", "native/export/ext4_napi.c", "native/export/btrfs_bulk.c", "native/export/btrfs_bulk_napi.c", "native/export/xfs_bulk.c", "native/export/xfs_dirs.c", "native/export/xfs_fsmap.c", "native/export/xfs_inodes.c", "native/export/xfs_peek.c", "native/export/xfs_fiemap.c", "native/export/xfs_bulk_napi.c", "native/export/bulk.c", "native/export/bulk_napi.c", "native/js_progress.c", "native/manifest/v2write.c", "native/manifest/utf8.c", "native/view/decode.c"],
      "cflags": ["-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE", "<!@(pkg-config --cflags ext2fs)"],
      "libraries": ["<!@(pkg-config --libs ext2fs)", "-lz", "-lzstd", "-llzo2"]
    },
    {
      "target_name": "extfs_view",
      "sources": ["native/view/engine.c", "native/view/check.c", "native/view/ops.c", "native/view/plan.c", "native/view/read.c", "native/view/config.c", "native/view/delta.c", "native/view/push.c", "native/view/prefetch.c", "native/view/stats.c", "native/view/shard.c", "native/view/decode.c", "native/view/load2.c", "native/view/load2_decode.c", "native/view/load2_index.c", "native/view/load2_data.c", "native/view/load2_dirs.c", "native/view/load2_inodes.c", "native/view/tables_file.c", "native/manifest/utf8.c", "native/csum.c", "native/js_progress.c"],
      "cflags": ["-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE", "<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)", "-lz", "-lzstd", "-llzo2"]
    }
  ]
}
