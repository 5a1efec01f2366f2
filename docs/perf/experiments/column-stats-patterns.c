// Column statistics (per-column sums of d = x - shift and d*d, f32 partials of 16 rows) over a
// 16 MiB f32 (rows, cols) buffer, in different read orders, against a plain read of the buffer
// (`plain`) and the same arithmetic as one stream (`plainstats`); the buffer is evicted by
// reading 64 MiB before every timing. docs/perf/cpu.md, round 21.
//   gcc -O3 -march=x86-64-v4 -Wno-unused-function -o colz column-stats-patterns.c
//   ./colz COLS [REPS]     (REPS at most 64)
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
static int cmp(const void*a,const void*b){double x=*(double*)a,y=*(double*)b;return x<y?-1:x>y;}
#define TOTAL (4u<<20)
static float *x, *sh, *p1, *p2; static double *s1,*s2; static size_t cols, rows;
static float sink;
static void add_parts(){ for(size_t c=0;c<cols;c++){s1[c]+=p1[c];s2[c]+=p2[c];} }
static void plain(){ __m512 a=_mm512_setzero_ps(),b=a; for(size_t i=0;i<rows*cols;i+=32){a=_mm512_add_ps(a,_mm512_loadu_ps(x+i));b=_mm512_add_ps(b,_mm512_loadu_ps(x+i+16));} sink+=_mm512_reduce_add_ps(_mm512_add_ps(a,b)); }
#define TILE(NV, FL) static void tile_##NV##_##FL(){ \
  for(size_t r0=0;r0<rows;r0+=FL){ \
    for(size_t c0=0;c0<cols;c0+=16*NV){ __m512 a[NV],b[NV]; \
      for(int i=0;i<NV;i++){a[i]=_mm512_setzero_ps();b[i]=a[i];} \
      for(size_t r=r0;r<r0+FL;r++){ const float*p=x+r*cols+c0; \
        for(int i=0;i<NV;i++){ __m512 d=_mm512_sub_ps(_mm512_loadu_ps(p+16*i),_mm512_loadu_ps(sh+c0+16*i)); a[i]=_mm512_add_ps(a[i],d); b[i]=_mm512_fmadd_ps(d,d,b[i]);} } \
      for(int i=0;i<NV;i++){_mm512_storeu_ps(p1+c0+16*i,a[i]);_mm512_storeu_ps(p2+c0+16*i,b[i]);} } \
    add_parts(); } }
TILE(2,16) TILE(4,16) TILE(8,16) TILE(4,64) TILE(8,64) TILE(4,256) TILE(8,256)
// full rows, partials in L1 (zmm)
static void rowseq(){
  for(size_t r0=0;r0<rows;r0+=16){ memset(p1,0,cols*4); memset(p2,0,cols*4);
    for(size_t r=r0;r<r0+16;r++){ const float*p=x+r*cols;
      for(size_t c=0;c<cols;c+=16){ __m512 d=_mm512_sub_ps(_mm512_loadu_ps(p+c),_mm512_loadu_ps(sh+c));
        _mm512_storeu_ps(p1+c,_mm512_add_ps(_mm512_loadu_ps(p1+c),d)); _mm512_storeu_ps(p2+c,_mm512_fmadd_ps(d,d,_mm512_loadu_ps(p2+c))); } }
    add_parts(); } }
#define RS(D) static void rowseq_pf##D(){ \
  for(size_t r0=0;r0<rows;r0+=16){ memset(p1,0,cols*4); memset(p2,0,cols*4); \
    for(size_t r=r0;r<r0+16;r++){ const float*p=x+r*cols; \
      for(size_t c=0;c<cols;c+=16){ _mm_prefetch((const char*)(p+c+D*256),_MM_HINT_T0); __m512 d=_mm512_sub_ps(_mm512_loadu_ps(p+c),_mm512_loadu_ps(sh+c)); \
        _mm512_storeu_ps(p1+c,_mm512_add_ps(_mm512_loadu_ps(p1+c),d)); _mm512_storeu_ps(p2+c,_mm512_fmadd_ps(d,d,_mm512_loadu_ps(p2+c))); } } \
    add_parts(); } }
RS(1) RS(2) RS(4) RS(8) RS(16)
// tile of 2 zmm over 16 rows, prefetching the same tile K rows ahead
#define TP(K) static void tile_pf##K(){ \
  for(size_t r0=0;r0<rows;r0+=16){ \
    for(size_t c0=0;c0<cols;c0+=32){ __m512 a0=_mm512_setzero_ps(),a1=a0,b0=a0,b1=a0; \
      for(size_t r=r0;r<r0+16;r++){ const float*p=x+r*cols+c0; \
        _mm_prefetch((const char*)(p+K*cols),_MM_HINT_T0); _mm_prefetch((const char*)(p+K*cols+16),_MM_HINT_T0); \
        __m512 d0=_mm512_sub_ps(_mm512_loadu_ps(p),_mm512_loadu_ps(sh+c0)), d1=_mm512_sub_ps(_mm512_loadu_ps(p+16),_mm512_loadu_ps(sh+c0+16)); \
        a0=_mm512_add_ps(a0,d0);a1=_mm512_add_ps(a1,d1);b0=_mm512_fmadd_ps(d0,d0,b0);b1=_mm512_fmadd_ps(d1,d1,b1);} \
      _mm512_storeu_ps(p1+c0,a0);_mm512_storeu_ps(p1+c0+16,a1);_mm512_storeu_ps(p2+c0,b0);_mm512_storeu_ps(p2+c0+16,b1);} \
    add_parts(); } }
TP(2) TP(4) TP(8) TP(16) TP(32)
#define R4(K) static void rowseq4_pf##K(){ \
  for(size_t r0=0;r0<rows;r0+=16){ memset(p1,0,cols*4); memset(p2,0,cols*4); \
    for(size_t r=r0;r<r0+16;r+=4){ const float*p=x+r*cols; \
      for(size_t c=0;c<cols;c+=16){ __m512 h=_mm512_loadu_ps(sh+c); \
        for(int j=0;j<4;j++) _mm_prefetch((const char*)(p+(K+j)*cols+c),_MM_HINT_T0); \
        __m512 d0=_mm512_sub_ps(_mm512_loadu_ps(p+c),h),d1=_mm512_sub_ps(_mm512_loadu_ps(p+cols+c),h),d2=_mm512_sub_ps(_mm512_loadu_ps(p+2*cols+c),h),d3=_mm512_sub_ps(_mm512_loadu_ps(p+3*cols+c),h); \
        _mm512_storeu_ps(p1+c,_mm512_add_ps(_mm512_loadu_ps(p1+c),_mm512_add_ps(_mm512_add_ps(d0,d1),_mm512_add_ps(d2,d3)))); \
        _mm512_storeu_ps(p2+c,_mm512_add_ps(_mm512_loadu_ps(p2+c),_mm512_fmadd_ps(d3,d3,_mm512_fmadd_ps(d2,d2,_mm512_fmadd_ps(d1,d1,_mm512_mul_ps(d0,d0)))))); } } \
    add_parts(); } }
R4(4) R4(8)
#define R2(D) static void rowseq2_pf##D(){ \
  for(size_t r0=0;r0<rows;r0+=16){ memset(p1,0,cols*4); memset(p2,0,cols*4); \
    for(size_t r=r0;r<r0+16;r+=2){ const float*p=x+r*cols; \
      for(size_t c=0;c<cols;c+=16){ __m512 h=_mm512_loadu_ps(sh+c); \
        _mm_prefetch((const char*)(p+c+D*256),_MM_HINT_T0); _mm_prefetch((const char*)(p+cols+c+D*256),_MM_HINT_T0); \
        __m512 d0=_mm512_sub_ps(_mm512_loadu_ps(p+c),h),d1=_mm512_sub_ps(_mm512_loadu_ps(p+cols+c),h); \
        _mm512_storeu_ps(p1+c,_mm512_add_ps(_mm512_loadu_ps(p1+c),_mm512_add_ps(d0,d1))); \
        _mm512_storeu_ps(p2+c,_mm512_add_ps(_mm512_loadu_ps(p2+c),_mm512_fmadd_ps(d1,d1,_mm512_mul_ps(d0,d0)))); } } \
    add_parts(); } }
R2(1) R2(2)
static void plainstats(){ __m512 h=_mm512_set1_ps(3.0f); __m512 a=_mm512_setzero_ps(),b=a,c=a,d=a; for(size_t i=0;i<rows*cols;i+=32){ __m512 d0=_mm512_sub_ps(_mm512_loadu_ps(x+i),h), d1=_mm512_sub_ps(_mm512_loadu_ps(x+i+16),h); a=_mm512_add_ps(a,d0); b=_mm512_add_ps(b,d1); c=_mm512_fmadd_ps(d0,d0,c); d=_mm512_fmadd_ps(d1,d1,d);} sink+=_mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a,b),_mm512_add_ps(c,d))); }
// full rows, 4 rows at a time into L1 partials
static void rowseq4(){
  for(size_t r0=0;r0<rows;r0+=16){ memset(p1,0,cols*4); memset(p2,0,cols*4);
    for(size_t r=r0;r<r0+16;r+=4){ const float*p=x+r*cols;
      for(size_t c=0;c<cols;c+=16){ __m512 h=_mm512_loadu_ps(sh+c);
        __m512 d0=_mm512_sub_ps(_mm512_loadu_ps(p+c),h),d1=_mm512_sub_ps(_mm512_loadu_ps(p+cols+c),h),d2=_mm512_sub_ps(_mm512_loadu_ps(p+2*cols+c),h),d3=_mm512_sub_ps(_mm512_loadu_ps(p+3*cols+c),h);
        _mm512_storeu_ps(p1+c,_mm512_add_ps(_mm512_loadu_ps(p1+c),_mm512_add_ps(_mm512_add_ps(d0,d1),_mm512_add_ps(d2,d3))));
        _mm512_storeu_ps(p2+c,_mm512_add_ps(_mm512_loadu_ps(p2+c),_mm512_fmadd_ps(d3,d3,_mm512_fmadd_ps(d2,d2,_mm512_fmadd_ps(d1,d1,_mm512_mul_ps(d0,d0)))))); } }
    add_parts(); } }
int main(int argc,char**argv){
  cols=atoi(argv[1]); rows=TOTAL/cols; int reps=argc>2?atoi(argv[2]):15;
  x=aligned_alloc(64,TOTAL*4); sh=aligned_alloc(64,cols*4); p1=aligned_alloc(64,cols*4); p2=aligned_alloc(64,cols*4); s1=calloc(cols,8); s2=calloc(cols,8);
  float *junk=aligned_alloc(64,64u<<20); for(size_t i=0;i<(16u<<20);i++) junk[i]=1;
  for(size_t i=0;i<TOTAL;i++) x[i]=(float)(i%977)*0.01f; for(size_t c=0;c<cols;c++) sh[c]=x[c];
  const char*names[]={"plain","tile2x16","rowseq4","rs_pf1K","rs_pf4K","tile_pf2","tile_pf4","r4_pf4","r4_pf8","r2_pf1K","r2_pf2K","plainstats"};
  enum{K=12}; double t[K][64];
  for(int k=0;k<reps;k++) for(int v=0;v<K;v++){
    { __m512 a=_mm512_setzero_ps(); for(size_t i=0;i<(16u<<20);i+=16) a=_mm512_add_ps(a,_mm512_load_ps(junk+i)); sink+=_mm512_reduce_add_ps(a); }
    double t0=now();
    switch(v){case 0:plain();break;case 1:tile_2_16();break;case 2:rowseq4();break;case 3:rowseq_pf1();break;case 4:rowseq_pf4();break;case 5:tile_pf2();break;case 6:tile_pf4();break;case 7:rowseq4_pf4();break;case 8:rowseq4_pf8();break;case 9:rowseq2_pf1();break;case 10:rowseq2_pf2();break;case 11:plainstats();break;}
    t[v][k]=now()-t0; }
  for(int v=0;v<K;v++){ qsort(t[v],reps,8,cmp); printf("cols %4zu %-10s median %.3f ms  %.1f GB/s\n",cols,names[v],t[v][reps/2]*1e3,TOTAL*4/t[v][reps/2]/1e9); }
  return (int)sink&0;
}
