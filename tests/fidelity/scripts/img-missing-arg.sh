# img-missing-arg
qemu-img create; echo rc=$?
qemu-img convert a; echo rc=$?
