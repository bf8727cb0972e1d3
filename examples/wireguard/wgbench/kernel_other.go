//go:build !linux

package main

import "errors"

var errNoRoot = errors.New("the kernel sender needs Linux")

func newKernelSender(key, string, int) (*sender, error) { return nil, errNoRoot }
