{
  "variables": {
    "extfs_view_asan%": "<!(node -p \"process.env.EXTFS_VIEW_ASAN || 0\")"
  },
  "targets": [
    {
      "target_name": "extfs_native",
      "sources": ["native/extfs_native.c", "native/btrfs.c"],
      "cflags": ["-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE"]
    },
    {
      "target_name": "extfs_view",
      "sources": ["native/view/engine.c", "native/view/ops.c", "native/view/read.c", "native/view/config.c"],
      "cflags": ["-Wall", "-Wextra", "-O2", "-D_GNU_SOURCE", "<!@(pkg-config --cflags fuse3)"],
      "libraries": ["<!@(pkg-config --libs fuse3)"],
      "conditions": [
        ["extfs_view_asan==1", {
          "cflags": ["-fsanitize=address", "-fno-omit-frame-pointer", "-g"],
          "ldflags": ["-fsanitize=address"]
        }]
      ]
    }
  ]
}
