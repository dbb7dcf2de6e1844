// The Go peer of weft-bench (bench/peers/go/main.go): standard library
// only, so it builds offline (GOFLAGS=-mod=mod GOPROXY=off).
module weft/bench/peers/go

go 1.19
