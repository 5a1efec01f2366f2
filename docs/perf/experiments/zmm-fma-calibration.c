#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
#define ST(OP,T,SET,N) { T a0=SET(1.0f),a1=SET(1.1f),a2=SET(1.2f),a3=SET(1.3f),a4=SET(1.4f),a5=SET(1.5f),a6=SET(1.6f),a7=SET(1.7f),m=SET(0.9999f),c=SET(1e-9f); \
  double t=now(); for(long n=0;n<N;n++){ a0=OP(a0,m,c);a1=OP(a1,m,c);a2=OP(a2,m,c);a3=OP(a3,m,c);a4=OP(a4,m,c);a5=OP(a5,m,c);a6=OP(a6,m,c);a7=OP(a7,m,c); \
  __asm__ volatile(""::"v"(a0),"v"(a1),"v"(a2),"v"(a3),"v"(a4),"v"(a5),"v"(a6),"v"(a7)); } double dt=now()-t; printf(#OP ": %.3f ns/op\n", dt/(N*8.0)*1e9); }
int main(){
  long N=100000000;
  ST(_mm512_fmadd_ps,__m512,_mm512_set1_ps,N)
  ST(_mm256_fmadd_ps,__m256,_mm256_set1_ps,N)
  __m512 z=_mm512_set1_ps(1.0f), m=_mm512_set1_ps(0.999f), c=_mm512_set1_ps(1e-9f);
  double t=now(); for(long n=0;n<N;n++){ z=_mm512_fmadd_ps(z,m,c); __asm__ volatile(""::"v"(z)); } double dt=now()-t;
  printf("fma latency: %.3f ns (4 cycles => %.2f GHz)\n", dt/N*1e9, 4/(dt/N*1e9));
  return 0;
}
