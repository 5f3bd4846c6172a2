# img-bad-cmd
qemu-img frob; echo rc=$?
