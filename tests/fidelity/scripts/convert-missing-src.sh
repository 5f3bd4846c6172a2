# convert-missing-src
qemu-img convert -O raw nosuch.qcow2 out.raw; echo rc=$?
