# create-neg-size
qemu-img create -f raw a.raw -- -1; echo rc=$?
