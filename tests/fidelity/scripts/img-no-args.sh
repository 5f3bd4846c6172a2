# img-no-args
qemu-img; echo rc=$?
