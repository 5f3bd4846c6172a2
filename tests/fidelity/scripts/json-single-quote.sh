# json-single-quote
qemu-img info "json:{'driver': 'null-co', 'size': 1048576}"
