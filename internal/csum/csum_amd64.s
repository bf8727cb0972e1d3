#include "go_asm.h"
#include "textflag.h"

// The kernel sums little-endian 16-bit words: the ones'-complement sum is
// byte-order independent (RFC 1071 1.2.B), so one byte swap of the folded
// sum gives gVisor's big-endian result without swapping every word. Loads
// are unaligned: the sum depends on each word's offset from buf[0], which
// stays even, not on the address.
//
// Vector loop: for each 32-byte load x, X += x and H += x>>16 in 32-bit
// lanes. H is the exact sum of the odd (high) words, X the lane sums modulo
// 2^32, so the even (low) words sum to exactly X - H<<16 as long as that sum
// fits 32 bits. This needs three vector ops per load instead of the four of
// a mask-and-shift split. A lane gets at most 0xffff per add; chunkBlocks
// bounds the adds per lane so that, after the chunk fold below, even the
// eight reconstructed sums added together fit 32 bits. Each chunk is folded
// into a 64-bit end-around-carry sum in AX, so any length is correct.

// SUM32(x, X, H) adds the 16 words of x into the lane sums X and H,
// clobbering x.
#define SUM32(x, X, H) \
	VPADDD	x, X, X \
	VPSRLD	$16, x, x \
	VPADDD	x, H, H

// LOWORDS(X, H) turns X into the exact sum of the low words, clobbering
// Y12.
#define LOWORDS(X, H) \
	VPSLLD	$16, H, Y12 \
	VPSUBD	Y12, X, X

// func checksumAVX2(buf []byte, initial uint16) uint16
TEXT ·checksumAVX2(SB), NOSPLIT, $0-34
	MOVQ	buf_base+0(FP), SI
	MOVQ	buf_len+8(FP), CX
	XORL	AX, AX
	// Below 128 bytes the vector setup and fold cost more than they save.
	CMPQ	CX, $128
	JB	scalar

chunk:
	// DX = number of 128-byte blocks in this chunk (>= 1, as CX >= 128).
	MOVQ	CX, DX
	SHRQ	$7, DX
	CMPQ	DX, $const_chunkBlocks
	JBE	blocks
	MOVQ	$const_chunkBlocks, DX

blocks:
	MOVQ	DX, BX
	SHLQ	$7, BX
	SUBQ	BX, CX
	VPXOR	Y0, Y0, Y0
	VPXOR	Y1, Y1, Y1
	VPXOR	Y2, Y2, Y2
	VPXOR	Y3, Y3, Y3
	VPXOR	Y4, Y4, Y4
	VPXOR	Y5, Y5, Y5
	VPXOR	Y6, Y6, Y6
	VPXOR	Y7, Y7, Y7

loop:
	// Four independent accumulator pairs keep the add chains short.
	VMOVDQU	0(SI), Y8
	VMOVDQU	32(SI), Y9
	VMOVDQU	64(SI), Y10
	VMOVDQU	96(SI), Y11
	SUM32(Y8, Y0, Y4)
	SUM32(Y9, Y1, Y5)
	SUM32(Y10, Y2, Y6)
	SUM32(Y11, Y3, Y7)
	ADDQ	$128, SI
	DECQ	DX
	JNZ	loop

	// More whole blocks remain only at a chunk boundary: fold and go on.
	CMPQ	CX, $128
	JAE	fold
	CMPQ	CX, $64
	JB	tail32
	VMOVDQU	0(SI), Y8
	VMOVDQU	32(SI), Y9
	SUM32(Y8, Y0, Y4)
	SUM32(Y9, Y1, Y5)
	ADDQ	$64, SI
	SUBQ	$64, CX

tail32:
	CMPQ	CX, $32
	JB	fold
	VMOVDQU	0(SI), Y10
	SUM32(Y10, Y2, Y6)
	ADDQ	$32, SI
	SUBQ	$32, CX

fold:
	LOWORDS(Y0, Y4)
	LOWORDS(Y1, Y5)
	LOWORDS(Y2, Y6)
	LOWORDS(Y3, Y7)
	VPADDD	Y4, Y0, Y0
	VPADDD	Y5, Y1, Y1
	VPADDD	Y6, Y2, Y2
	VPADDD	Y7, Y3, Y3
	VPADDD	Y1, Y0, Y0
	VPADDD	Y3, Y2, Y2
	VPADDD	Y2, Y0, Y0
	// Widen the eight 32-bit lanes to 64 bits before the horizontal sum.
	VPSRLQ	$32, Y0, Y1
	VPSLLQ	$32, Y0, Y0
	VPSRLQ	$32, Y0, Y0
	VPADDQ	Y1, Y0, Y0
	VEXTRACTI128	$1, Y0, X1
	VPADDQ	X1, X0, X0
	VMOVQ	X0, R8
	VPEXTRQ	$1, X0, R9
	ADDQ	R8, AX
	ADCQ	R9, AX
	ADCQ	$0, AX
	CMPQ	CX, $128
	JAE	chunk
	// Avoid the AVX-SSE transition penalty in the caller.
	VZEROUPPER

scalar:
	// Fewer than 128 bytes remain (fewer than 32 after the vector part).
	// Straight-line add-with-carry runs, one per power of two.
	TESTQ	$64, CX
	JZ	lt64
	ADDQ	0(SI), AX
	ADCQ	8(SI), AX
	ADCQ	16(SI), AX
	ADCQ	24(SI), AX
	ADCQ	32(SI), AX
	ADCQ	40(SI), AX
	ADCQ	48(SI), AX
	ADCQ	56(SI), AX
	ADCQ	$0, AX
	ADDQ	$64, SI

lt64:
	TESTQ	$32, CX
	JZ	lt32
	ADDQ	0(SI), AX
	ADCQ	8(SI), AX
	ADCQ	16(SI), AX
	ADCQ	24(SI), AX
	ADCQ	$0, AX
	ADDQ	$32, SI

lt32:
	TESTQ	$16, CX
	JZ	lt16
	ADDQ	0(SI), AX
	ADCQ	8(SI), AX
	ADCQ	$0, AX
	ADDQ	$16, SI

lt16:
	TESTQ	$8, CX
	JZ	lt8
	ADDQ	0(SI), AX
	ADCQ	$0, AX
	ADDQ	$8, SI

lt8:
	TESTQ	$4, CX
	JZ	lt4
	MOVLQZX	(SI), DX
	ADDQ	DX, AX
	ADCQ	$0, AX
	ADDQ	$4, SI

lt4:
	TESTQ	$2, CX
	JZ	lt2
	MOVWQZX	(SI), DX
	ADDQ	DX, AX
	ADCQ	$0, AX
	ADDQ	$2, SI

lt2:
	// An odd last byte is the low byte of a little-endian word.
	TESTQ	$1, CX
	JZ	reduce
	MOVBQZX	(SI), DX
	ADDQ	DX, AX
	ADCQ	$0, AX

reduce:
	// Fold to 32 bits: adding the value to itself rotated by half its width
	// leaves the end-around-carry sum of the halves in the top half.
	MOVQ	AX, DX
	RORQ	$32, DX
	ADDQ	DX, AX
	SHRQ	$32, AX
	// Swapping all four bytes swaps each 16-bit half and the halves; the
	// halves still sum to the byte-swapped 16-bit sum, now in big-endian
	// order, so initial (already big-endian) is added here, late, keeping
	// it off the data's dependency chain.
	BSWAPL	AX
	MOVWLZX	initial+24(FP), DX
	ADDL	DX, AX
	ADCL	$0, AX
	MOVL	AX, DX
	RORL	$16, DX
	ADDL	DX, AX
	SHRL	$16, AX
	MOVW	AX, ret+32(FP)
	RET
