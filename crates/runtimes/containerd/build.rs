// Nothing to generate: the build script exists so that cargo fetches and
// unpacks the build-dependency protoc-bin-vendored-linux-x86_64 before
// containerd-client's own build script runs prost-build, which finds that
// protoc through PROTOC=.cargo/protoc (see ../shared/reference/dependencies.md,
// "protoc", and docs/containerd.md).
fn main() {}
