# info-devnull
qemu-img info /dev/null; echo rc=$?
