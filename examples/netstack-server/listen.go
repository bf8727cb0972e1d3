package main

import "context"

func runListen(ctx context.Context, o options) error {
	return usageError{"-listen is not implemented yet"}
}
