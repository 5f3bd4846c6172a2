# info-dir
mkdir d
qemu-img info d; echo rc=$?
