package main

import "context"

type tapEnv struct{ runEnv }

func (tapEnv) Close() {}

func newTapEnv(ctx context.Context) (*tapEnv, error) {
	return nil, usageError{"-tap is not implemented yet"}
}
