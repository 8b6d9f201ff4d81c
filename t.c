#include <stdio.h>
#include <time.h>
#include <sys/resource.h>
int main(int c, char **v){ int hz=27, secs=15; struct timespec ts={0, 1000000000/hz}; struct rusage a,b; getrusage(RUSAGE_SELF,&a);
 for(int i=0;i<hz*secs;i++) nanosleep(&ts,0);
 getrusage(RUSAGE_SELF,&b); double cpu=(b.ru_utime.tv_sec-a.ru_utime.tv_sec)+(b.ru_utime.tv_usec-a.ru_utime.tv_usec)/1e6+(b.ru_stime.tv_sec-a.ru_stime.tv_sec)+(b.ru_stime.tv_usec-a.ru_stime.tv_usec)/1e6;
 printf("C nanosleep 27Hz: cpu=%.3f ms per wake=%.1f us share=%.3f%%\n", cpu*1e3, cpu*1e6/(hz*secs), cpu*100/secs); }
