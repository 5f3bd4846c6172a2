# img-bad-opt
qemu-img info --frob a; echo rc=$?
